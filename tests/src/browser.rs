//! A headless Chromium driven through its WebDriver: Debian's `chromium` and
//! `chromium-driver`, which `scripts/setup.sh` installs. A missing driver is a failure, never a
//! skipped test.
//!
//! The driver runs in a process group of its own, with a temporary directory of its own: on
//! drop (a test that passed or panicked alike) the whole group, the browser with it, is
//! killed and the directory removed.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};

pub struct Browser {
    pub client: Client,
    driver: Child,
    _scratch: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").field("driver", &self.driver.id()).finish()
    }
}

impl Browser {
    /// A new browser with a laptop's window (1366 by 900).
    pub async fn start() -> Browser {
        let scratch = tempfile::tempdir().expect("a scratch directory");
        let port = crate::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .env("TMPDIR", scratch.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver is not on PATH: scripts/setup.sh installs chromium and chromium-driver");
        crate::eventually("chromedriver to listen", Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()
        })
        .await;
        // The engine's certificate is signed by the test's own authority, which the browser does
        // not know: it is told to take it (the connection is still TLS, on loopback).
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1366,900", "--lang=en-US"]
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else { unreachable!("an object") };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a browser session");
        Browser { client, driver, _scratch: scratch }
    }

    /// The element `css` finds, once it is there (within `timeout`). A page the browser could
    /// not load because the machine's network changed under it (Docker adds and removes
    /// interfaces as containers come and go: `ERR_NETWORK_CHANGED`) is loaded again.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> fantoccini::elements::Element {
        let started = std::time::Instant::now();
        loop {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                return element;
            }
            let failed_load = "return document.body !== null && document.body.classList.contains('neterror')";
            if self.client.execute(failed_load, vec![]).await.ok().and_then(|v| v.as_bool()) == Some(true) {
                let _ = self.client.refresh().await;
            }
            if started.elapsed() >= timeout {
                let url = self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default();
                let shown = self.client.source().await.unwrap_or_default();
                panic!("`{css}` did not show within {timeout:?}; at {url}:\n{shown}")
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the window as `name`.png in `dir`.
    pub async fn screenshot(&self, dir: &std::path::Path, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::create_dir_all(dir).expect("the screenshots' directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("the screenshot is written");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The driver's group: the driver, the browser and its helpers.
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.driver.wait();
    }
}
