//! Telling systemd that this process serves, and that it is the service's main process: at
//! start, and in the new process of an in-place upgrade, so `ExecReload=kill -USR2 $MAINPID`
//! finds it next time (`Type=notify`, `NotifyAccess=all`).

use std::{ffi::OsStr, os::unix::net::UnixDatagram};

/// Sends `READY=1` and `MAINPID=<this process>` to the socket in `NOTIFY_SOCKET` (as
/// `sd_notify` does); nothing when it is not set. A failure is logged, never fatal.
///
/// ```no_run
/// // Once the listeners accept:
/// tower_ws_proxy::server::notify_systemd_ready();
/// ```
pub fn notify_systemd_ready() {
    if let Some(socket) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(error) = notify(&socket) {
            tracing::warn!(%error, "could not tell systemd that this process serves");
        }
    }
}

fn notify(socket: &OsStr) -> std::io::Result<()> {
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    let sender = UnixDatagram::unbound()?;
    // `@name`: an abstract socket (what systemd uses today).
    #[cfg(target_os = "linux")]
    if let Some(name) = socket.as_encoded_bytes().strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sender.send_to_addr(message.as_bytes(), &address)?;
        return Ok(());
    }
    sender.send_to(message.as_bytes(), socket)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systemd_hears_ready_and_this_process_as_the_main_one() {
        let path = std::env::temp_dir().join(format!("wscluster-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let systemd = UnixDatagram::bind(&path).unwrap();
        notify(path.as_os_str()).unwrap();
        let mut heard = [0u8; 128];
        let n = systemd.recv(&mut heard).unwrap();
        let expected = format!("READY=1\nMAINPID={}\n", std::process::id());
        assert_eq!(std::str::from_utf8(&heard[..n]).unwrap(), expected);
        std::fs::remove_file(&path).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_abstract_socket_is_reached_by_its_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("wscluster-notify-{}", std::process::id());
        let address = std::os::unix::net::SocketAddr::from_abstract_name(&name).unwrap();
        let systemd = UnixDatagram::bind_addr(&address).unwrap();
        notify(OsStr::new(&format!("@{name}"))).unwrap();
        let mut heard = [0u8; 128];
        let n = systemd.recv(&mut heard).unwrap();
        assert!(heard[..n].starts_with(b"READY=1\n"));
    }
}
