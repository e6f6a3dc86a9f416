//! The kernel/user contract: map names, map keys and values, and ring buffer records.
//!
//! Every type here is `#[repr(C)]`, `Copy` and free of implicit padding, so both sides see the
//! same bytes. The `user` feature adds `aya::Pod` impls for the agent.
#![no_std]

pub mod host;
pub mod net;
