#![no_main]
//! See merkmail_fuzz::http::check for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| merkmail_fuzz::http::check(data));
