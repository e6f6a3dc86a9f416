//! eBPF programs of the sensor. One module per hook family; maps live next to their programs.
#![no_std]
#![no_main]

mod host;
mod net;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable path to this loop, so a panic cannot ship.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
