//! The guest lab's driver. The library part is the protocol xtask shares.
pub mod protocol;
