//! Kernel uevents as the netlink listener reads them (datagrams cut at its 16 KiB buffer).
//! Parsing must not panic, and a parsed event formatted as the kernel would must parse back to
//! the same event.
#![no_main]

use gfs_controld_fuzz::{check, init_target, seeds, CountingAlloc};
use gfs_core::{format_uevent, parse_uevent};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const LISTENER_BUFFER: usize = 16 << 10;

fuzz_target!(init: init_target(seeds::uevent, &[]), |data: &[u8]| {
    let data = &data[..data.len().min(LISTENER_BUFFER)];
    check("uevent", data.len(), || {
        let Ok(event) = parse_uevent(data) else {
            return false;
        };
        // parse(format(parse(x))) == parse(x)
        assert_eq!(
            parse_uevent(&format_uevent(&event)),
            Ok(event),
            "formatted event parses differently"
        );
        true
    });
});
