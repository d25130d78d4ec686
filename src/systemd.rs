//! `sd_notify` over `$NOTIFY_SOCKET`, so the unit can be `Type=notify` without linking libsystemd.

use std::os::unix::net::UnixDatagram;

/// Send `state` (e.g. `READY=1`, `STOPPING=1`, `STATUS=...`) to systemd if it is listening.
/// Not running under systemd is not an error; a socket that refuses is logged and ignored,
/// because the daemon's job does not depend on it.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = UnixDatagram::unbound().and_then(|sock| {
        if let Some(name) = bytes.strip_prefix(b"@") {
            // An abstract socket: the name follows a NUL byte.
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), std::path::Path::new(&path))
        }
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, state, "could not notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifies_a_listening_socket() {
        let dir = std::env::temp_dir().join(format!("gfs-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        notify("READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
