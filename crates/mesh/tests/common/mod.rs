//! Helpers of the mesh's tests: backends on 127.0.0.1, a mesh fed by a
//! watch channel, and deadline polling.

#![allow(dead_code)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use flotilla_mesh::{CopyMode, Mesh, MeshConfig};
use flotilla_types::mesh::{
    Backend, Balance, ListenerStats, MeshPort, MeshService, MeshStats, MeshTable,
};
use flotilla_types::port::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A port nobody listens on now (bound to 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Polls `check` every 10 ms until it returns `Some`, or panics at the
/// deadline with `what`.
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A backend that writes `<name>\n` to every connection, then echoes what
/// it reads until end of stream, then closes.
pub struct Echo {
    pub name: String,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Echo {
    pub async fn start(name: &str) -> Echo {
        let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind echo");
        let addr = listener.local_addr().expect("addr");
        let greeting = format!("{name}\n").into_bytes();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    if s.write_all(&greeting).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Echo {
            name: name.to_string(),
            addr,
            task,
        }
    }

    pub fn backend(&self) -> Backend {
        Backend {
            task_id: format!("task-{}", self.name),
            node_id: "node-1".into(),
            addr: self.addr,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A backend that reads each connection to its end and sends the bytes.
pub async fn recorder() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind((LOCAL, 0)).await.expect("bind recorder");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = s.read_to_end(&mut all).await;
                let _ = tx.send(all);
            });
        }
    });
    (addr, rx)
}

pub fn service(name: &str, balance: Balance, ports: Vec<MeshPort>) -> MeshService {
    MeshService {
        service_id: format!("id-{name}"),
        service_name: name.into(),
        options: flotilla_types::mesh::MeshOptions {
            balance,
            ..Default::default()
        },
        ports,
    }
}

pub fn port(published: u16, backends: Vec<Backend>) -> MeshPort {
    MeshPort {
        published,
        target: 80,
        protocol: Protocol::Tcp,
        backends,
    }
}

pub fn table(services: Vec<MeshService>) -> MeshTable {
    MeshTable { services }
}

/// A running mesh on 127.0.0.1, stopped (and awaited) on drop.
pub struct Running {
    pub mesh: Mesh,
    pub table: watch::Sender<MeshTable>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Running {
    pub async fn start(initial: MeshTable) -> Running {
        Running::start_with(initial, CopyMode::default()).await
    }

    pub async fn start_with(initial: MeshTable, copy: CopyMode) -> Running {
        Running::start_config(initial, |config| config.copy = copy).await
    }

    /// A mesh with the tests' timeouts, then `set` applied to its config.
    pub async fn start_config(initial: MeshTable, set: impl FnOnce(&mut MeshConfig)) -> Running {
        let mut config = MeshConfig::new("node-1");
        config.bind_ip = LOCAL;
        config.connect_timeout = Duration::from_millis(500);
        config.bind_retry = Duration::from_millis(100);
        set(&mut config);
        let mesh = Mesh::new(config);
        let (tx, rx) = watch::channel(initial);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(mesh.clone().run(rx, shutdown.clone()));
        Running {
            mesh,
            table: tx,
            shutdown,
            task: Some(task),
        }
    }

    pub fn stats(&self) -> MeshStats {
        self.mesh.stats()
    }

    pub fn listener(&self, published: u16) -> Option<ListenerStats> {
        self.stats()
            .listeners
            .into_iter()
            .find(|l| l.published == published)
    }

    /// Waits until `published` listens.
    pub async fn listening(&self, published: u16) {
        until("the port to listen", || async {
            self.listener(published).filter(|l| l.listening).map(|_| ())
        })
        .await;
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("mesh stops")
                .expect("mesh task");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Connects through the mesh and reads the backend's greeting line.
pub async fn connect(published: u16) -> (TcpStream, String) {
    let mut s = TcpStream::connect((LOCAL, published))
        .await
        .expect("connect to the mesh");
    let name = read_line(&mut s).await;
    (s, name)
}

pub async fn read_line(s: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(DEADLINE, async {
        loop {
            let n = s.read(&mut byte).await.expect("read");
            assert!(
                n == 1,
                "end of stream before a line: {:?}",
                String::from_utf8_lossy(&line)
            );
            if byte[0] == b'\n' {
                break;
            }
            line.push(byte[0]);
        }
    })
    .await
    .expect("a line within the deadline");
    String::from_utf8(line).expect("utf-8")
}

/// Writes `text` and reads the echo back.
pub async fn echo(s: &mut TcpStream, text: &str) -> String {
    s.write_all(text.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; text.len()];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .expect("echo within the deadline")
        .expect("echo");
    String::from_utf8(buf).expect("utf-8")
}

/// True when the peer closes the connection (end of stream or reset)
/// within `within`.
pub async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(within, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => panic!("unexpected bytes"),
        Err(_) => false,
    }
}
