//! Prints the current code of a demo token: what `cargo xtask demo` shows until the device
//! program can speak. The demo secret is public (RFC 6238's), so nothing real is exposed.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use codereader_otp::{KeyPolicy, KeyUri, UnixTime};

const DEMO_URI: &str = "otpauth://totp/codereader%20demo:demo?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=codereader%20demo&algorithm=SHA1&digits=6&period=30";

fn main() -> ExitCode {
    let uri = match KeyUri::parse(DEMO_URI, KeyPolicy::Rfc4226) {
        Ok(uri) => uri,
        Err(e) => {
            eprintln!("demo token is invalid: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(totp) = uri.totp() else {
        eprintln!("demo token is not a TOTP token");
        return ExitCode::FAILURE;
    };
    let now = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => UnixTime(d.as_secs()),
        Err(_) => {
            eprintln!("the system clock is before 1970: set the clock first");
            return ExitCode::FAILURE;
        }
    };
    match totp.code_at(now) {
        Ok(code) => {
            let period = totp.period().seconds();
            let left = period - (now.0 - totp.t0().0) % period;
            println!(
                "Demo token {}: code {} (valid for {left} more seconds)",
                uri.account(),
                code.as_str()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot compute the code: {e}");
            ExitCode::FAILURE
        }
    }
}
