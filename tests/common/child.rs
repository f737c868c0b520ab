//! `wsbridge serve` as a child process with an environment of its own (proxy variables,
//! `SSL_CERT_FILE`), so no test changes the test process's environment, and its log kept.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::PATIENCE;

/// What a child logs, kept as it goes.
pub type Log = Arc<Mutex<Vec<String>>>;

/// Variables a developer's or CI machine may set that would change what a child does.
pub const INHERITED: [&str; 11] = [
    "RUST_LOG",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "https_proxy",
    "HTTPS_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// Starts `wsbridge serve` at `upstream` with `env` (and none of [`INHERITED`] from the test
/// process); returns the child, its base URL and its log.
pub async fn serve(upstream: &str, env: &[(&str, &str)]) -> (Child, String, Log) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wsbridge"));
    command.args(["serve", "--listen", "127.0.0.1:0", "--upstream", upstream]);
    for name in INHERITED {
        command.env_remove(name);
    }
    let mut child = command
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let log = Log::default();
    let kept = log.clone();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    let marker = "listening on http://";
    let addr = tokio::time::timeout(PATIENCE, async {
        loop {
            let found = log.lock().unwrap().iter().find_map(|line| {
                let at = line.find(marker)? + marker.len();
                line[at..].split_whitespace().next().map(str::to_owned)
            });
            if let Some(addr) = found {
                return addr;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no listening line: {:?}", log.lock().unwrap()));
    (child, format!("http://{addr}/v1"), log)
}

pub fn stop(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}
