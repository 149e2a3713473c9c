//! Verifies one-time codes exactly once.
