//! Configuration from the environment: any `WSBRIDGE_*` values either load into a valid
//! configuration or give an error; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsbridge::config::{Config, Sources, env_names};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let names: Vec<String> = env_names().into_keys().collect();
    // Each line `N=VALUE` sets the N-th known variable (mod their count), or a raw name.
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| {
            let name = match name.parse::<usize>() {
                Ok(n) => names[n % names.len()].clone(),
                Err(_) => name.to_owned(),
            };
            (name, value.to_owned())
        })
        .collect();
    let _ = Config::load(Sources { file: None, env, overrides: Vec::new() });
});
