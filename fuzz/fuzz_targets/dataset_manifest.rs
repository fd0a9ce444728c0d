//! Any text as a dataset.toml: parsing returns a validated spec or an error, never panics, and a
//! spec that parses survives a write/parse round trip unchanged.
#![no_main]
use cyclestudio::data::DatasetSpec;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(spec) = DatasetSpec::parse(text, Path::new("dataset.toml")) else { return };
    let written = toml::to_string(&spec).expect("a valid spec serialises");
    let again = DatasetSpec::parse(&written, Path::new("dataset.toml")).expect("a written spec parses");
    assert_eq!(spec, again);
});
