//! Cross-component test support.
pub mod fake_apiserver;

/// Starts `tcpdump` (already given its arguments) and returns once it says its
/// capture is live. Its stderr is drained until it exits, since a closed pipe
/// would kill it on its next write; the thread returns what it said.
pub fn start_tcpdump(
    mut tcpdump: std::process::Command,
) -> (std::process::Child, std::thread::JoinHandle<String>) {
    use std::io::Read as _;
    let mut child = tcpdump
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("tcpdump (CI installs it)");
    let (live_tx, live_rx) = std::sync::mpsc::channel();
    let mut err = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        let mut told = false;
        while err.read(&mut byte).unwrap_or(0) == 1 {
            seen.push(byte[0]);
            if !told && String::from_utf8_lossy(&seen).contains("listening on") {
                let _ = live_tx.send(());
                told = true;
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    });
    live_rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("tcpdump did not start capturing");
    (child, stderr)
}
