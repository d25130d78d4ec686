//! The daemon group's CPG messages: any peer (or any process corosync lets join the group) can
//! send any bytes. Decoding must not panic, and what decodes must survive a round trip.
#![no_main]

use gfs_controld_fuzz::{check, init_target, seeds, CountingAlloc};
use gfs_core::wire::{decode, decode_up_to, encode, PROTOCOL_MAX};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fuzz_target!(init: init_target(seeds::wire, &[]), |data: &[u8]| {
    check("wire", data.len(), || {
        // A build that speaks newer versions decodes the same bytes without panicking too, and
        // agrees wherever this version's decoder accepts them.
        let wide = decode_up_to(data, u16::MAX);
        let Ok((header, msg)) = decode(data) else {
            return false;
        };
        assert_eq!(wide.as_ref().ok(), Some(&(header.clone(), msg.clone())));
        assert!(header.version <= PROTOCOL_MAX);
        // decode(encode(decode(x))) == decode(x)
        let again = encode(&header, &msg);
        assert_eq!(
            decode(&again).as_ref().ok(),
            Some(&(header, msg)),
            "re-encoded message decodes differently"
        );
        true
    });
});
