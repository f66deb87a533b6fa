//! A TCP proxy that stands for a dependency going away and coming back.

use anyhow::Result;

/// A TCP proxy that a test can cut and restore, standing for a dependency going away: while
/// it is down, new connections are refused and open ones are cut.
pub struct Proxy {
    pub port: u16,
    target: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(target: std::net::SocketAddr) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut proxy = Self {
            port,
            target,
            task: None,
        };
        proxy.up().await?;
        Ok(proxy)
    }

    /// A proxy to the tests' ClickHouse (its HTTP port).
    pub async fn clickhouse() -> Result<Self> {
        let target = reqwest::Url::parse(&crate::services::clickhouse_url())?;
        let addr = format!(
            "{}:{}",
            target.host_str().unwrap_or("127.0.0.1"),
            target.port().unwrap_or(8123)
        );
        Self::start(addr.parse()?).await
    }

    /// The `SIFT_CLICKHOUSE_URL` setting that points a batcher at this proxy.
    pub fn clickhouse_env(&self) -> [(&'static str, String); 1] {
        [(
            "SIFT_CLICKHOUSE_URL",
            format!("http://127.0.0.1:{}", self.port),
        )]
    }

    pub async fn up(&mut self) -> Result<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await?;
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
            // Dropping the JoinSet aborts every open connection.
        }));
        Ok(())
    }

    /// Cuts the open connections, then takes new ones and never answers: a host gone
    /// without a word (a failover, a dropped network), which only a timeout notices.
    pub async fn stall(&mut self) -> Result<()> {
        self.down().await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await?;
        self.task = Some(tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((inbound, _)) = listener.accept().await {
                held.push(inbound);
            }
        }));
        Ok(())
    }

    /// Refuses new connections and cuts the open ones.
    pub async fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
