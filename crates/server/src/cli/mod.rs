//! The binary's modules (the library's are beside `main.rs` in `src/`): one per command
//! family, plus the command line's definition (`args`), opening the store from its flags
//! (`store`) and the printers (`print`) they share, so that what a command does is found by
//! its name, and `main.rs` is only the glue that picks one.

pub(crate) mod api_key;
pub(crate) mod args;
pub(crate) mod kek;
pub(crate) mod print;
pub(crate) mod serve;
pub(crate) mod store;
pub(crate) mod token;
