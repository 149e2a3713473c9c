//! GPIO buttons (an appliance's own keys): each line is watched by a thread that sends the
//! button's action on every press, and is requested again when it fails.

use std::sync::mpsc::Sender;
use std::thread;
use std::time::Duration;

use crate::config::Gpio;
use crate::process::log;

use super::{Event, RETRY};

/// Watches one GPIO button.
pub(crate) fn start_gpio(button: Gpio, events: Sender<Event>) {
    let spawned = thread::Builder::new().name("gpio".into()).spawn(move || {
        loop {
            match read_gpio(&button, &events) {
                Ok(()) => return,
                Err(e) => log(&format!(
                    "error: GPIO {} line {}: {e}; trying again in {} s",
                    button.chip.display(),
                    button.line,
                    RETRY.as_secs()
                )),
            }
            thread::sleep(RETRY);
        }
    });
    if let Err(e) = spawned {
        log(&format!("error: cannot start the GPIO thread: {e}"));
    }
}

fn read_gpio(button: &Gpio, events: &Sender<Event>) -> Result<(), gpiocdev::Error> {
    use gpiocdev::line::{Bias, EdgeDetection};
    let mut builder = gpiocdev::Request::builder();
    builder
        .on_chip(&button.chip)
        .with_consumer("codereader")
        .with_line(button.line)
        .as_input();
    if button.active_low {
        builder.as_active_low().with_bias(Bias::PullUp);
    } else {
        builder.with_bias(Bias::PullDown);
    }
    let request = builder
        // With active_low, pressing is the rising edge of the *logical* value.
        .with_edge_detection(EdgeDetection::RisingEdge)
        .with_debounce_period(Duration::from_millis(u64::from(button.debounce_ms)))
        .request()?;
    log(&format!(
        "GPIO button {} line {} does {}",
        button.chip.display(),
        button.line,
        button.action
    ));
    loop {
        request.read_edge_event()?;
        if events.send(Event::Action(button.action)).is_err() {
            return Ok(());
        }
    }
}
