#![no_main]
//! See merkmail_fuzz::maildir::names for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| merkmail_fuzz::maildir::names(data));
