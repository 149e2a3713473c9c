//! Prometheus metrics: verifications by outcome, their latency, store errors, HTTP statuses.
//!
//! Plain atomics rendered to the text exposition format by hand: a handful of series do not
//! justify a metrics framework, and recording stays lock-free on the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Outcome labels, in the order of the counters.
pub const OUTCOMES: [&str; 8] = [
    "accepted",
    "rejected",
    "locked",
    "replayed",
    "unknown",
    "disabled",
    "too_soon",
    "rate_limited",
];

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// HTTP status classes counted.
const STATUS_CLASSES: [&str; 4] = ["2xx", "4xx", "5xx", "other"];

/// All counters of one server.
#[derive(Debug, Default)]
pub struct Metrics {
    outcomes: [AtomicU64; OUTCOMES.len()],
    buckets: [AtomicU64; LATENCY_BOUNDS.len()],
    latency_count: AtomicU64,
    latency_sum_nanos: AtomicU64,
    store_errors: AtomicU64,
    seal_errors: AtomicU64,
    key_unavailable: AtomicU64,
    statuses: [AtomicU64; STATUS_CLASSES.len()],
}

impl Metrics {
    /// Counts one verification with `outcome` (one of [`OUTCOMES`]) that took `elapsed`.
    pub fn record_verify(&self, outcome: &str, elapsed: Duration) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.outcomes[i].fetch_add(1, Ordering::Relaxed);
        }
        self.record_latency(elapsed);
    }

    /// Adds one verification latency to the histogram.
    pub fn record_latency(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        // Buckets are stored non-cumulative; rendering accumulates them.
        if let Some(i) = LATENCY_BOUNDS.iter().position(|b| seconds <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.latency_sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Counts one failed store operation.
    pub fn record_store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one seed that did not open (a key the keyring lacks, or a bad seal).
    pub fn record_seal_error(&self) {
        self.seal_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request refused because the key-encryption key could not be used (its
    /// hardware module does not answer).
    pub fn record_key_unavailable(&self) {
        self.key_unavailable.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one HTTP response.
    pub fn record_status(&self, status: u16) {
        let class = match status {
            200..=299 => 0,
            400..=499 => 1,
            500..=599 => 2,
            _ => 3,
        };
        self.statuses[class].fetch_add(1, Ordering::Relaxed);
    }

    /// The number of verifications counted with `outcome`.
    pub fn verifies(&self, outcome: &str) -> u64 {
        OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .map_or(0, |i| self.outcomes[i].load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        // `write!` to a String cannot fail; the results are ignored for that reason.
        out.push_str(
            "# HELP codereader_verifies_total Verifications answered, by outcome.\n\
             # TYPE codereader_verifies_total counter\n",
        );
        for (name, counter) in OUTCOMES.iter().zip(&self.outcomes) {
            let _ = writeln!(
                out,
                "codereader_verifies_total{{outcome=\"{name}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP codereader_verify_duration_seconds Time to decide a verification, store included.\n\
             # TYPE codereader_verify_duration_seconds histogram\n",
        );
        let mut cumulative = 0u64;
        for (bound, bucket) in LATENCY_BOUNDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "codereader_verify_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "codereader_verify_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "codereader_verify_duration_seconds_sum {sum}");
        let _ = writeln!(out, "codereader_verify_duration_seconds_count {count}");
        out.push_str(
            "# HELP codereader_store_errors_total Store operations that failed.\n\
             # TYPE codereader_store_errors_total counter\n",
        );
        let _ = writeln!(
            out,
            "codereader_store_errors_total {}",
            self.store_errors.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP codereader_seal_errors_total Seeds that did not open (key missing or bad seal).\n\
             # TYPE codereader_seal_errors_total counter\n",
        );
        let _ = writeln!(
            out,
            "codereader_seal_errors_total {}",
            self.seal_errors.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP codereader_key_unavailable_total Requests refused because the key-encryption \
             key could not be used (hardware module gone, PIN refused).\n\
             # TYPE codereader_key_unavailable_total counter\n",
        );
        let _ = writeln!(
            out,
            "codereader_key_unavailable_total {}",
            self.key_unavailable.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP codereader_http_responses_total HTTP responses, by status class.\n\
             # TYPE codereader_http_responses_total counter\n",
        );
        for (class, counter) in STATUS_CLASSES.iter().zip(&self.statuses) {
            let _ = writeln!(
                out,
                "codereader_http_responses_total{{class=\"{class}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let m = Metrics::default();
        m.record_verify("accepted", Duration::from_micros(50));
        m.record_verify("rejected", Duration::from_millis(3));
        m.record_verify("accepted", Duration::from_secs(9));
        m.record_store_error();
        m.record_seal_error();
        m.record_status(200);
        m.record_status(503);
        let text = m.render();
        assert!(text.contains("codereader_verifies_total{outcome=\"accepted\"} 2\n"));
        assert!(text.contains("codereader_verifies_total{outcome=\"rejected\"} 1\n"));
        assert!(text.contains("codereader_verify_duration_seconds_bucket{le=\"0.0001\"} 1\n"));
        assert!(text.contains("codereader_verify_duration_seconds_bucket{le=\"0.005\"} 2\n"));
        assert!(text.contains("codereader_verify_duration_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("codereader_verify_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("codereader_verify_duration_seconds_count 3\n"));
        assert!(text.contains("codereader_store_errors_total 1\n"));
        assert!(text.contains("codereader_seal_errors_total 1\n"));
        assert!(text.contains("codereader_http_responses_total{class=\"5xx\"} 1\n"));
        assert_eq!(m.verifies("accepted"), 2);
    }
}
