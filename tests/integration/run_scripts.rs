//! The run scripts (`scripts/run-local.sh`, `scripts/run-func.sh`) can run at once: each puts its
//! build at `./handler` while the other may be running it, so the copy must replace the file, never
//! write into it (writing into a running executable fails with "Text file busy").

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::TempDir;

#[test]
fn the_build_replaces_a_running_handler_without_writing_into_it() {
    let dir = TempDir::new("run-scripts");
    let running = dir.path().join("handler");
    std::fs::copy("/bin/sleep", &running).unwrap();
    let mut child = Command::new(&running).arg("30").stdin(Stdio::null()).spawn().expect("run ./handler");
    let plain_copy = std::fs::copy(env!("CARGO_BIN_EXE_handler"), &running);
    assert_eq!(
        plain_copy.err().and_then(|e| e.raw_os_error()),
        Some(26), // ETXTBSY
        "the situation the scripts meet: copying onto the running ./handler fails"
    );

    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lib.sh");
    let output = Command::new("bash")
        .arg("-c")
        .arg(r#"set -euo pipefail; source "$1"; install_handler "$2""#)
        .arg("install_handler")
        .arg(&lib)
        .arg(env!("CARGO_BIN_EXE_handler"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(std::fs::read(&running).unwrap(), std::fs::read(env!("CARGO_BIN_EXE_handler")).unwrap());
    assert_eq!(std::fs::metadata(&running).unwrap().permissions().mode() & 0o777, 0o755);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["handler"], "no temporary file left behind");
    assert!(child.try_wait().unwrap().is_none(), "the running handler is left alone");
    child.kill().unwrap();
    child.wait().unwrap();
}
