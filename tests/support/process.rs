//! The real `portcullis` binary as a child process, stopped by its PID on
//! drop, and temporary files for its config and output.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------

/// A file under the temp dir, removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(what: &str, contents: &str) -> TempFile {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "portcullis-test-{}-{}-{what}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        TempFile { path }
    }

    pub fn read(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `portcullis run` in a child process, killed (by its PID) and reaped on
/// drop, so that a failed assertion never leaks it.
pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// stdout and stderr of the child, shown when something goes wrong.
    pub log: TempFile,
    pub config: TempFile,
}

impl GatewayProcess {
    /// Start the binary on a free port with `config` (which must contain
    /// `listen: {LISTEN}`), and wait (10 s at most) until it accepts
    /// connections.
    pub fn start(config: &str) -> GatewayProcess {
        GatewayProcess::start_with(config, &[], "warn")
    }

    /// The same, with extra command-line `args` and a `RUST_LOG` filter.
    pub fn start_with(config: &str, args: &[&str], log_filter: &str) -> GatewayProcess {
        let addr = free_port();
        let config = TempFile::new(
            "gateway.yaml",
            &config.replace("{LISTEN}", &addr.to_string()),
        );
        let log = TempFile::new("gateway.log", "");
        let out = std::fs::File::create(&log.path).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("run")
            .arg("--config")
            .arg(&config.path)
            .args(["--workers", "1"])
            .args(args)
            .env("RUST_LOG", log_filter)
            .env_remove("PORTCULLIS_CONFIG")
            .env_remove("PORTCULLIS_WORKERS")
            .env_remove("PORTCULLIS_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn portcullis");
        let mut gateway = GatewayProcess {
            child,
            addr,
            log,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return gateway;
            }
            if let Some(status) = gateway.child.try_wait().expect("try_wait") {
                panic!(
                    "portcullis exited with {status} before listening:\n{}",
                    gateway.log.read()
                );
            }
            assert!(
                Instant::now() < deadline,
                "portcullis did not listen on {addr} within 10 s:\n{}",
                gateway.log.read()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Peak resident set size (`VmHWM`) of the child, in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.status_kib("VmHWM") * 1024
    }

    /// Current resident set size (`VmRSS`) of the child, in bytes.
    pub fn rss(&self) -> u64 {
        self.status_kib("VmRSS") * 1024
    }

    /// The `field:` line of `/proc/<pid>/status`, in kB; panics if missing.
    fn status_kib(&self, field: &str) -> u64 {
        let status_path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&status_path)
            .unwrap_or_else(|e| panic!("read {status_path}: {e}"));
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status_path}:\n{status}"))
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now: bind 127.0.0.1:0, read it, let it go.
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr")
}

impl GatewayProcess {
    /// Send a signal (`HUP`, `TERM`…) to the child, by its PID.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    /// Wait for the child to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}
