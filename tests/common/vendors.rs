//! The vendors' own programs as test peers: a Python virtualenv with their clients
//! (`tests/vendors/setup.sh`), and their scripts run as callers or bots.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// The virtualenv's python, created on first use (`.ci/run` creates it beforehand).
pub fn vendor_python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let out = Command::new("bash")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/vendors/setup.sh"
            ))
            .stderr(Stdio::inherit())
            .output()
            .expect("bash runs");
        assert!(
            out.status.success(),
            "tests/vendors/setup.sh failed: the vendors' clients are needed (docs/book/src/development.md)"
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// `tests/vendors/<script>`.
pub fn vendor_script(name: &str) -> String {
    format!("{}/tests/vendors/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs a vendor script to completion with `args`; its standard output as JSON.
pub fn run_vendor_script(name: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(vendor_python())
        .arg(vendor_script(name))
        .args(args)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{name} printed no JSON ({e}): {stdout}"))
}

/// A vendor script serving HTTP on loopback (it prints `PORT <n>` first); killed when dropped.
pub struct VendorServer {
    child: Child,
    pub port: u16,
}

impl VendorServer {
    pub fn start(name: &str, args: &[&str]) -> VendorServer {
        let mut child = Command::new(vendor_python())
            .arg(vendor_script(name))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{name} did not start: {line:?}"));
        VendorServer { child, port }
    }

    /// `GET /requests` of the server: what it received.
    pub async fn received(&self) -> serde_json::Value {
        reqwest::get(format!("http://127.0.0.1:{}/requests", self.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for VendorServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// [`run_vendor_script`] off the async runtime's thread, so an in-process proxy on the same
/// runtime keeps serving while the script waits for it.
pub async fn run_vendor_script_async(name: &'static str, args: Vec<String>) -> serde_json::Value {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_vendor_script(name, &args)
    })
    .await
    .unwrap()
}
