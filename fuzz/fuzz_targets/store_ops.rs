#![no_main]
//! See merkmail_fuzz::store_ops::check for what this target checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| merkmail_fuzz::store_ops::check(data));
