//! The real `handler` binary, started as the host starts it, and a minimal HTTP/1.1 client for it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{TempDir, free_port};

/// Where [`Handler::start_logging`] writes the log, in the handler's folder.
const LOG_FILE: &str = "handler.log";
/// Where [`Handler::start`] sends the error output, in a folder of its own.
const STDERR_FILE: &str = "stderr.log";

/// A running handler process, killed on drop.
pub struct Handler {
    child: Child,
    pub port: u16,
    pub dir: TempDir,
    immutable_root: bool,
    /// Where the error output goes when nothing else keeps it: outside the handler's folder
    /// (which some tests require to stay empty), read if the handler fails to start.
    error_output: Option<TempDir>,
}

/// One HTTP answer: status, lower-cased headers, JSON body (`Null` when not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Handler {
    /// Starts a handler with `env` (on top of a port, `PATH` and a private `LocalStorePath`) and
    /// waits until it answers `GET /`.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("handler");
        let cmd = command(env, &dir, free_port());
        Self::spawn(cmd, dir, false)
    }

    /// Like [`Handler::start`], keeping the error output (the logs) for [`Handler::stop`] (only
    /// for short runs: nobody reads the pipe before then).
    pub fn start_keeping_logs(env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("handler");
        let cmd = command(env, &dir, free_port());
        Self::spawn(cmd, dir, true)
    }

    /// Like [`Handler::start`], writing its whole log (stdout and stderr, in order) to a file that
    /// [`Handler::log`] reads: for runs of any length (nothing waits on a pipe).
    pub fn start_logging(env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("handler");
        let cmd = command(env, &dir, free_port());
        let file = std::fs::File::create(dir.path().join(LOG_FILE)).expect("create the handler's log file");
        let out = file.try_clone().expect("clone the log file handle");
        Self::spawn_with(cmd, dir, Stdio::from(out), Stdio::from(file), None)
    }

    /// What a handler started with [`Handler::start_logging`] has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(LOG_FILE)).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (as the host does) and waits at most `bound` for the process to exit: its exit
    /// status and how long it took, or `Err(bound)` if it is still running (it is killed on drop).
    pub fn terminate_within(&mut self, bound: Duration) -> Result<(std::process::ExitStatus, Duration), Duration> {
        let sent = Instant::now();
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        assert!(status.is_ok_and(|s| s.success()), "could not send SIGTERM to the handler");
        while sent.elapsed() < bound {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Ok((status, sent.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(bound)
    }

    /// Starts a handler as Azure runs it: the platform's variables set, the app root (its working
    /// directory) read-only where `chattr` can make it so, and no `LocalStorePath` unless `env`
    /// sets one.
    pub fn start_on_azure(env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new("handler-azure");
        let mut cmd = command(env, &dir, free_port());
        if !env.iter().any(|(name, _)| *name == "LocalStorePath") {
            cmd.env_remove("LocalStorePath");
        }
        cmd.env("WEBSITE_INSTANCE_ID", "0123456789abcdef0123456789abcdef")
            .env("WEBSITE_SITE_NAME", "cachepatterns-test")
            .env("FUNCTIONS_APP_ROOT_PATH", dir.path());
        let read_only = Command::new("chattr").arg("+i").arg(dir.path()).status().is_ok_and(|s| s.success());
        eprintln!("app root read-only (chattr +i): {read_only}");
        let mut handler = Self::spawn(cmd, dir, true);
        handler.immutable_root = read_only;
        handler
    }

    /// Spawns `cmd`; with `keep_stderr`, its error output is kept for [`Handler::stop`] (only for
    /// short runs: nobody reads the pipe before then).
    fn spawn(cmd: Command, dir: TempDir, keep_stderr: bool) -> Self {
        if keep_stderr {
            return Self::spawn_with(cmd, dir, Stdio::null(), Stdio::piped(), None);
        }
        let error_output = TempDir::new("handler-stderr");
        let file = std::fs::File::create(error_output.path().join(STDERR_FILE)).expect("create the stderr file");
        Self::spawn_with(cmd, dir, Stdio::null(), Stdio::from(file), Some(error_output))
    }

    /// Spawns `cmd` with its output going to `stdout` and `stderr`, and waits until it answers.
    fn spawn_with(mut cmd: Command, dir: TempDir, stdout: Stdio, stderr: Stdio, error_output: Option<TempDir>) -> Self {
        let port = cmd
            .get_envs()
            .find(|(k, _)| *k == "FUNCTIONS_CUSTOMHANDLER_PORT")
            .and_then(|(_, v)| v?.to_str()?.parse().ok())
            .expect("a port");
        let child = cmd.stdout(stdout).stderr(stderr).spawn().expect("spawn handler");
        let mut handler = Self { child, port, dir, immutable_root: false, error_output };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = handler.child.try_wait() {
                // Its error output, wherever it went: a pipe, its log file, or a file beside it.
                let mut err = String::new();
                if let Some(mut stderr) = handler.child.stderr.take() {
                    let _ = stderr.read_to_string(&mut err);
                }
                let mut files = vec![handler.dir.path().join(LOG_FILE)];
                files.extend(handler.error_output.as_ref().map(|d| d.path().join(STDERR_FILE)));
                for file in files {
                    err.push_str(&std::fs::read_to_string(file).unwrap_or_default());
                }
                panic!("handler exited at start-up with {status}; its error output: {err:?}");
            }
            if handler.request("GET", "/", None).is_ok() {
                return handler;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("handler did not answer GET / within 20 s");
    }

    /// A minimal HTTP/1.1 exchange over a fresh connection; the body is sent as JSON.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, Value)> {
        self.exchange(method, path, &[("Content-Type", "application/json")], body.unwrap_or(""))
            .map(|a| (a.status, a.body))
    }

    /// An HTTP/1.1 exchange with extra headers.
    pub fn exchange(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> std::io::Result<Answer> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response)?;
        Ok(parse_response(&response))
    }

    /// Stops the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.immutable_root {
            let _ = Command::new("chattr").arg("-i").arg(self.dir.path()).status();
            self.immutable_root = false;
        }
    }

    /// Asks the process to stop (SIGTERM, as the host does), waits for it and returns its exit
    /// status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.child.wait().ok()
    }

    /// Stops the process and returns what it wrote to stderr.
    pub fn stop(&mut self) -> String {
        self.kill();
        let mut err = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            let _ = stderr.read_to_string(&mut err);
        }
        err
    }
}

/// Status, headers and JSON body of a raw HTTP/1.1 response (not chunked).
pub fn parse_response(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer { status, headers, body: serde_json::from_str(body).unwrap_or(Value::Null) }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The handler command: a clean environment with `PATH`, the port and a private store, then `env`.
pub fn command(env: &[(&str, &str)], dir: &TempDir, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_handler"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
        .env("LocalStorePath", dir.path().join("store.db"))
        .current_dir(dir.path())
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Reads `key` from a SQLite store file directly: (value JSON text, version, deleted).
pub fn sqlite_row(path: &Path, key: &str) -> Option<(Option<String>, u64, bool)> {
    let conn = rusqlite::Connection::open(path).expect("open the store file");
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row("SELECT value, version, deleted FROM items WHERE key = ?1", [key], |row| {
        Ok((row.get::<_, Option<String>>(0)?, row.get::<_, i64>(1)? as u64, row.get::<_, bool>(2)?))
    })
    .ok()
}
