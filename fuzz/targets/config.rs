//! The configuration file parser. The daemon reads the file as UTF-8 (other bytes are an error
//! before parsing), so each input is mapped to UTF-8 lossily and every one reaches the parser.
//! Errors must name the file; accepted settings printed by `--dump_config` must read back to
//! the same settings.
#![no_main]

use std::path::Path;

use gfs_controld::config::Settings;
use gfs_controld_fuzz::{check, init_target, seeds, CountingAlloc};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const PATH: &str = "/etc/gfs_controld.conf";

fuzz_target!(init: init_target(seeds::config, &[]), |data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check("config", data.len(), || {
        let path = Path::new(PATH);
        match Settings::from_file_text(&text, path) {
            Ok(settings) => {
                let back = Settings::from_file_text(&settings.dump(), path)
                    .expect("--dump_config output reads back");
                assert_eq!(back, settings, "--dump_config output reads back differently");
                true
            }
            Err(e) => {
                let message = e.to_string();
                assert!(
                    message.starts_with(&format!("{PATH}:")),
                    "error does not name the file: {message}"
                );
                false
            }
        }
    });
});
