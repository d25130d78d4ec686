//! The control socket's lines: the daemon decodes requests from any local root client, and
//! `gfs_control` decodes whatever answers on the socket. Each input is tried as a request and
//! as the reply to every kind of request; whatever decodes must survive a round trip.
#![no_main]

use gfs_controld::control::proto::{
    decode_reply, decode_request, encode_reply, encode_request, Request,
};
use gfs_controld_fuzz::{check, init_target, seeds, CountingAlloc};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Random bytes rarely get past JSON syntax and the envelope: each input is also tried as the
/// payload inside a valid envelope, so the fuzzer spends its time on the typed decoding.
fn in_envelopes(data: &[u8]) -> [Vec<u8>; 3] {
    let wrap = |head: &[u8]| [head, data, b"}\n"].concat();
    [
        data.to_vec(),
        wrap(b"{\"version\":1,\"request\":"),
        wrap(b"{\"version\":1,\"ok\":"),
    ]
}

fuzz_target!(init: init_target(seeds::control, &[("control.dict", seeds::control_dict())]), |data: &[u8]| {
    check("control", data.len(), || {
        // Every form is decoded (no short circuit): each is a check of its own.
        in_envelopes(data).map(|line| decode_both(&line)).contains(&true)
    });
});

/// Decodes `data` as a request and as the reply to each kind of request; checks round trips.
fn decode_both(data: &[u8]) -> bool {
    let mut accepted = false;
    let requests = [
        Request::Status {},
        Request::Ls { fs: None },
        Request::Dump {},
        Request::FenceAck { nodeid: 1 },
        Request::Version {},
    ];
    for request in &requests {
        if let Ok(reply) = decode_reply(data, request) {
            let line = encode_reply(&reply);
            assert_eq!(
                decode_reply(line.as_bytes(), request).ok(),
                Some(reply),
                "re-encoded reply decodes differently"
            );
            accepted = true;
        }
    }
    if let Ok(request) = decode_request(data) {
        let line = encode_request(&request);
        assert_eq!(
            decode_request(line.as_bytes()).ok(),
            Some(request),
            "re-encoded request decodes differently"
        );
        accepted = true;
    }
    accepted
}
