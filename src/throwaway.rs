//! A throwaway Postgres cluster in a temp dir, on a free loopback port, for
//! `outbox-relay demo`, the benchmarks and the tests.
//!
//! Works as root too: Postgres refuses to run as root, so the server then runs
//! as the `postgres` account (or `nobody`). A small reaper process removes the
//! cluster when this process exits, however it exits (panic, Ctrl-C, kill -9):
//! it waits for end-of-file on a pipe that only this process holds open.

use std::fs;
use std::io::Read as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long to wait for a starting server to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Server settings for a throwaway cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
    /// Turn off fsync and friends: fine for tests and the demo, never for
    /// figures that claim to describe production.
    pub unsafe_fast: bool,
    /// `ssl = on` with these PEM files (for the TLS tests).
    pub tls: Option<ServerTls>,
    /// The whole pg_hba.conf, instead of initdb's (trust for everyone).
    pub hba_conf: Option<String>,
}

/// The server's side of TLS, as PEM text.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: String,
    pub key: String,
    /// Roots that client certificates are checked against (`ssl_ca_file`).
    pub client_ca: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            settings: Vec::new(),
            unsafe_fast: true,
            tls: None,
            hba_conf: None,
        }
    }
}

/// A running throwaway cluster. Dropping it stops the server and removes the
/// directory; if the process dies first, the reaper does both.
pub struct Cluster {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    options: ClusterOptions,
    server: Option<Child>,
    reaper: Option<(Child, ChildStdin)>,
}

impl Cluster {
    /// initdb + start. Blocking; call it from `spawn_blocking` in async code.
    pub fn start(options: ClusterOptions) -> Result<Cluster> {
        let bindir = find_bindir()?;
        let run_as = server_account()?;
        let dir = tempfile::Builder::new()
            .prefix("outbox-relay-pg-")
            .tempdir()
            .context("creating a temp dir for the throwaway cluster")?
            .keep();
        let port = free_port()?;
        let mut cluster = Cluster {
            dir,
            bindir,
            port,
            run_as,
            options,
            server: None,
            reaper: None,
        };
        cluster.start_reaper()?;
        cluster.initdb()?;
        cluster.start_server()?;
        Ok(cluster)
    }

    /// Connection URL of database `db` as the superuser `postgres`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?connect_timeout=10",
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Fast shutdown of the server, keeping the data (for outage tests).
    pub fn stop_server(&mut self) -> Result<()> {
        if let Some(mut child) = self.server.take() {
            signal(&child, nix::sys::signal::Signal::SIGINT);
            child.wait().context("waiting for postgres to stop")?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and data.
    pub fn start_server(&mut self) -> Result<()> {
        if self.server.is_some() {
            return Ok(());
        }
        let log = fs::File::create(self.dir.join("server.log")).context("creating server.log")?;
        self.chown(&self.dir.join("server.log"))?;
        let mut cmd = Command::new(self.bindir.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=200"]);
        if self.options.unsafe_fast {
            cmd.args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
                .args(["-c", "full_page_writes=off"]);
        }
        for (name, value) in &self.options.settings {
            cmd.arg("-c").arg(format!("{name}={value}"));
        }
        for (name, value) in self.write_server_files()? {
            cmd.arg("-c").arg(format!("{name}={}", value.display()));
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning the log handle")?)
            .stderr(log)
            // Its own process group: a Ctrl-C meant for us must not stop the
            // server before we have cleaned up.
            .process_group(0);
        self.as_server_account(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bindir.join("postgres").display()))?;
        self.server = Some(child);
        self.wait_ready()
    }

    /// Writes the TLS files and pg_hba.conf of the options, owned by the
    /// server account with mode 0600 (Postgres refuses a key others can read);
    /// returns the settings that point at them.
    fn write_server_files(&self) -> Result<Vec<(&'static str, PathBuf)>> {
        let mut files: Vec<(&'static str, &'static str, &str)> = Vec::new();
        if let Some(tls) = &self.options.tls {
            files.push(("ssl_cert_file", "server.crt", &tls.cert));
            files.push(("ssl_key_file", "server.key", &tls.key));
            if let Some(ca) = &tls.client_ca {
                files.push(("ssl_ca_file", "client-ca.crt", ca));
            }
        }
        if let Some(hba) = &self.options.hba_conf {
            files.push(("hba_file", "pg_hba.conf", hba));
        }
        let mut settings = Vec::new();
        for (setting, name, text) in files {
            let path = self.dir.join(name);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
            self.chown(&path)?;
            settings.push((setting, path));
        }
        if self.options.tls.is_some() {
            settings.push(("ssl", PathBuf::from("on")));
        }
        Ok(settings)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                // Accepting TCP is not yet accepting queries; pg_isready asks
                // the server itself.
                let pg_isready = self.bindir.join("pg_isready");
                let ready = !pg_isready.exists()
                    || Command::new(pg_isready)
                        .args(["-h", "127.0.0.1", "-q", "-p", &self.port.to_string()])
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false);
                if ready {
                    return Ok(());
                }
            }
            if let Some(child) = self.server.as_mut() {
                if let Some(status) = child.try_wait().context("polling postgres")? {
                    self.server = None;
                    bail!(
                        "postgres exited with {status} while starting; its log:\n{}",
                        self.log_tail()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not accept connections within {:?}; its log:\n{}",
                    START_TIMEOUT,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn initdb(&self) -> Result<()> {
        let data = self.dir.join("data");
        let mut cmd = Command::new(self.bindir.join("initdb"));
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null());
        self.as_server_account(&mut cmd);
        let out = cmd
            .output()
            .with_context(|| format!("running {}", self.bindir.join("initdb").display()))?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The reaper: `sh` blocked reading a pipe from us. End-of-file means this
    /// process is gone (or the cluster was dropped): stop the server, remove
    /// the directory.
    fn start_reaper(&mut self) -> Result<()> {
        let script = r#"
            cat >/dev/null
            pid=$(head -1 "$1/data/postmaster.pid" 2>/dev/null)
            if [ -n "$pid" ]; then
                kill -QUIT "$pid" 2>/dev/null
                i=0
                while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
            fi
            rm -rf "$1"
        "#;
        let mut child = Command::new("sh")
            .args(["-c", script, "outbox-relay-reaper"])
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the cleanup process for the throwaway cluster")?;
        let stdin = child
            .stdin
            .take()
            .context("the cleanup process has no stdin pipe")?;
        self.reaper = Some((child, stdin));
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid))
                .context("handing the cluster dir to the server account")?;
        }
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .context("setting the cluster dir's mode")?;
        Ok(())
    }

    fn as_server_account(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
            // initdb and postgres read $HOME-less environments fine, but a
            // root-only cwd would make them fail.
            cmd.current_dir(&self.dir);
        }
    }

    fn chown(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = fs::File::open(self.dir.join("server.log")) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            signal(&child, nix::sys::signal::Signal::SIGQUIT);
            let _ = child.wait();
        }
        // Closing the pipe lets the reaper remove the directory.
        if let Some((mut child, stdin)) = self.reaper.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, sig);
}

/// The account the server (and a test's pgbouncer) runs as: None (ourselves)
/// unless we are root.
pub fn server_account() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "nobody"] {
        if let Some(user) =
            nix::unistd::User::from_name(name).context("reading the user database")?
        {
            return Ok(Some((user.uid.as_raw(), user.gid.as_raw())));
        }
    }
    bail!("running as root, and neither a 'postgres' nor a 'nobody' account exists to run the server as")
}

/// Postgres server binaries: `initdb` on PATH, then `pg_config --bindir`, then
/// the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Result<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_server(&dir) {
                // /usr/local/bin/initdb may be a link into the real bindir,
                // which also has pg_isready.
                let real = fs::canonicalize(dir.join("initdb"))
                    .ok()
                    .and_then(|p| p.parent().map(Path::to_path_buf))
                    .filter(|d| has_server(d));
                return Ok(real.unwrap_or(dir));
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&dir) {
            return Ok(dir);
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, dir)| dir).context(
        "no Postgres server binaries found (looked for initdb on PATH, via pg_config --bindir, \
         and under /usr/lib/postgresql/*/bin); install the Postgres server package",
    )
}

fn free_port() -> Result<u16> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}
