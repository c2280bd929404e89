//! `nightshift box-init`: the first program in a box that has a gateway. It listens on the box's loopback
//! (bubblewrap brings `lo` up in the box's network namespace), forwards every connection to a unix socket
//! bound into the box from outside, runs the agent as its child, and exits with the agent's status. The box
//! ends when it does: bubblewrap, the box's pid 1, takes every other process with it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use tokio::net::{TcpListener, UnixStream};

/// One `--forward 127.0.0.1:PORT=/path/to.sock`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub listen: SocketAddr,
    pub socket: PathBuf,
}

impl std::str::FromStr for Forward {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (listen, socket) = text.split_once('=').ok_or_else(|| {
            format!("`{text}` is not ADDRESS=SOCKET (e.g. 127.0.0.1:8080=/run/x.sock)")
        })?;
        let listen: SocketAddr = listen
            .parse()
            .map_err(|e| format!("`{listen}` is not an address: {e}"))?;
        if !listen.ip().is_loopback() {
            return Err(format!("`{listen}` is not a loopback address"));
        }
        Ok(Forward {
            listen,
            socket: PathBuf::from(socket),
        })
    }
}

/// Runs the forwarders and the agent; returns the agent's exit status (128 + signal when killed).
pub fn main(forwards: Vec<Forward>, argv: Vec<String>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("nightshift box-init: {e}");
            return ExitCode::from(125);
        }
    };
    match runtime.block_on(run(forwards, argv)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("nightshift box-init: {e:#}");
            ExitCode::from(125)
        }
    }
}

async fn run(forwards: Vec<Forward>, argv: Vec<String>) -> Result<u8> {
    let (program, args) = argv.split_first().context("no agent command after --")?;
    // Listening before the agent starts: its first request finds the port open.
    let mut listeners = Vec::new();
    for forward in forwards {
        let listener = TcpListener::bind(forward.listen)
            .await
            .with_context(|| format!("cannot listen on {}", forward.listen))?;
        listeners.push((listener, forward.socket));
    }
    for (listener, socket) in listeners {
        tokio::spawn(serve(listener, socket));
    }
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .spawn()
        .with_context(|| format!("cannot start `{program}`"))?;
    let status = child.wait().await?;
    if let Some(code) = status.code() {
        return Ok(code as u8);
    }
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(signal) => Ok(128u8.saturating_add(signal as u8)),
        None => bail!("the agent ended without a status"),
    }
}

async fn serve(listener: TcpListener, socket: PathBuf) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            continue;
        };
        let socket = socket.clone();
        tokio::spawn(async move {
            match UnixStream::connect(&socket).await {
                Ok(mut upstream) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(e) => eprintln!(
                    "nightshift box-init: cannot reach {}: {e}",
                    socket.display()
                ),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_parse_and_stay_on_loopback() {
        let f: Forward = "127.0.0.1:8080=/run/nightshift/gateway.sock"
            .parse()
            .unwrap();
        assert_eq!(f.listen.port(), 8080);
        assert_eq!(f.socket, PathBuf::from("/run/nightshift/gateway.sock"));
        assert!(
            "0.0.0.0:80=/x"
                .parse::<Forward>()
                .unwrap_err()
                .contains("loopback")
        );
        assert!(
            "127.0.0.1:80"
                .parse::<Forward>()
                .unwrap_err()
                .contains("ADDRESS=SOCKET")
        );
    }
}
