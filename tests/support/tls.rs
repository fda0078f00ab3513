//! TLS for the tests: a private CA, a server certificate and a client
//! certificate made with the `openssl` command in a temporary folder (no key
//! is checked in), and a `redis-server` that speaks only TLS with them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{Env, free_port, wait_until};

/// A CA made for one test, with a server certificate for 127.0.0.1 and
/// localhost and a client certificate, all signed by it.
pub struct TestPki {
    dir: TempDir,
}

impl TestPki {
    pub fn new() -> Self {
        let pki = TestPki {
            dir: tempfile::tempdir().expect("tempdir"),
        };
        pki.make_ca("ca");
        pki.make_leaf(
            "server",
            "ca",
            "/CN=localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        pki.make_leaf(
            "client",
            "ca",
            "/CN=flit-cache test client",
            "extendedKeyUsage=clientAuth\n",
        );
        pki
    }

    /// Another CA, that signed nothing the server shows.
    pub fn other_ca(&self) -> PathBuf {
        let path = self.path("other-ca.crt");
        if !path.exists() {
            self.make_ca("other-ca");
        }
        path
    }

    /// A client certificate and key signed by another CA than the server trusts.
    pub fn foreign_client(&self) -> (PathBuf, PathBuf) {
        self.other_ca();
        if !self.path("foreign.crt").exists() {
            self.make_leaf(
                "foreign",
                "other-ca",
                "/CN=stranger",
                "extendedKeyUsage=clientAuth\n",
            );
        }
        (self.path("foreign.crt"), self.path("foreign.key"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca.crt")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.path("server.crt")
    }

    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }

    pub fn client_cert(&self) -> PathBuf {
        self.path("client.crt")
    }

    pub fn client_key(&self) -> PathBuf {
        self.path("client.key")
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("openssl must be installed");
        assert!(
            out.status.success(),
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn make_ca(&self, name: &str) {
        self.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=flit-cache test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
    }

    fn make_leaf(&self, name: &str, ca: &str, subject: &str, extensions: &str) {
        std::fs::write(
            self.path(&format!("{name}.ext")),
            format!(
                "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{extensions}"
            ),
        )
        .expect("write extensions");
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            subject,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
}

/// A `redis-server` that listens only on a TLS port (no plain port), with
/// the server certificate of `pki`, its own data folder, AOF on.
pub struct TlsRedis {
    pub port: u16,
    /// The data folder, removed when the server is dropped.
    _dir: TempDir,
    child: Option<Child>,
    ca: Vec<u8>,
    client: (Vec<u8>, Vec<u8>),
}

impl TlsRedis {
    /// `require_client_cert`: `--tls-auth-clients yes` (mutual TLS) or no.
    pub fn start(pki: &TestPki, require_client_cert: bool) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--tls-cert-file")
            .arg(pki.server_cert())
            .arg("--tls-key-file")
            .arg(pki.server_key())
            .arg("--tls-ca-cert-file")
            .arg(pki.ca())
            .args([
                "--tls-auth-clients",
                if require_client_cert { "yes" } else { "no" },
            ])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--logfile", "redis.log"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (the test command installs it)");
        let read = |path: PathBuf| std::fs::read(path).expect("read test PKI");
        let server = TlsRedis {
            port,
            _dir: dir,
            child: Some(child),
            ca: read(pki.ca()),
            client: (read(pki.client_cert()), read(pki.client_key())),
        };
        wait_until(
            Duration::from_secs(20),
            "redis-server (TLS) to answer",
            || {
                server
                    .client(0)
                    .get_connection()
                    .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                    .is_ok()
            },
        );
        server
    }

    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// The test's own client: trusts the test CA and shows the client
    /// certificate (accepted whether or not the server asks for one).
    pub fn client(&self, db: i64) -> redis::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        redis::Client::build_with_tls(
            format!("{}/{db}", self.url()),
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: self.client.0.clone(),
                    client_key: self.client.1.clone(),
                }),
                root_cert: Some(self.ca.clone()),
            },
        )
        .expect("TLS client")
    }

    pub fn conn(&self, db: i64) -> redis::Connection {
        self.client(db).get_connection().expect("TLS connection")
    }

    /// The test environment of [`Env::new`], pointed at this server over
    /// TLS, with no TLS files yet.
    pub fn env(&self) -> Env {
        Env::for_url(self.url()).set("FLIT_SINK", "local")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
