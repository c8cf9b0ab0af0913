//! Engines other than the local socket: an address with nobody behind it, a Podman socket that
//! is not served, a TLS engine refusing the client's certificate (each a clear message naming
//! the address, exit 5, the host unchanged), and which mechanism lists the change on the engine
//! the suite runs against (the upper layer only where the engine is provably local).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::common::*;

/// Runs `run --unit u` in `repo` against `env`, expecting the engine error: exit 5, the
/// address and `hint` in the message, nothing on stdout and the host unchanged.
fn refused(repo: &TestRepo, env: &[(&str, &str)], endpoint: &str, hint: &str) {
    let before = repo.host_state();
    let out = repo
        .cmd()
        .envs(env.iter().copied())
        .args(["run", "--unit", "u"])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{env:?}: {err}");
    assert!(
        err.starts_with(&format!("error: container engine at {endpoint}: ")),
        "names the engine: {err}"
    );
    assert!(err.contains(&format!("\nhint: {hint}")), "{env:?}: {err}");
    assert_eq!(stdout(&out), "");
    assert_eq!(repo.host_state(), before, "host unchanged: {env:?}");
}

fn project(salt: &str) -> TestRepo {
    let repo = TestRepo::with_project(salt);
    repo.agent("echo changed >> README.md");
    repo.unit("u", "scope = [\"README.md\"]", "Change the readme.");
    repo.write("README.md", "hello\n");
    repo.commit("project");
    repo
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn an_engine_that_is_not_there_is_named_with_what_to_do() {
    let repo = project("engine-absent");
    let port = free_port();
    let tcp = format!("tcp://127.0.0.1:{port}");
    refused(
        &repo,
        &[("DOCKER_HOST", &tcp), ("DOCKER_TLS_VERIFY", "")],
        &tcp,
        &format!("nothing answers at {tcp}"),
    );

    // A Podman socket left behind by a service that is not running: the file is there, nobody
    // accepts on it.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("podman/podman.sock");
    std::fs::create_dir_all(sock.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    let unix = format!("unix://{}", sock.display());
    refused(
        &repo,
        &[("DOCKER_HOST", &unix)],
        &unix,
        &format!("the socket {unix} exists but no engine answers on it: Podman: `systemctl start podman.socket`, or `podman system service --time=0"),
    );
    std::fs::remove_file(&sock).unwrap();
    refused(
        &repo,
        &[("DOCKER_HOST", &unix)],
        &unix,
        &format!("no socket at {unix}: Podman"),
    );
}

/// `openssl …` in `dir`, which must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority `name` in `dir` (`name.pem`, `name-key.pem`) and a leaf signed by it.
fn pki(dir: &Path, ca: &str, leaf: &str, ext: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={ca}"),
            "-keyout",
            &format!("{ca}-key.pem"),
            "-out",
            &format!("{ca}.pem"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &format!("{leaf}-key.pem"),
            "-out",
            &format!("{leaf}.csr"),
        ],
    );
    std::fs::write(dir.join(format!("{leaf}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{leaf}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &format!("{leaf}.ext"),
            "-out",
            &format!("{leaf}.pem"),
        ],
    );
}

/// A TLS server that demands a client certificate of its own authority, as a TLS engine does.
struct TlsServer(Child);

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_client_certificate_the_engine_does_not_trust_is_refused_naming_the_engine() {
    let repo = project("engine-tls");
    let pki_dir = tempfile::tempdir().unwrap();
    let d = pki_dir.path();
    pki(
        d,
        "engine-ca",
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    );
    pki(d, "other-ca", "client", "extendedKeyUsage=clientAuth\n");
    // The client's directory: the engine's authority (so the server is trusted) and a client
    // certificate of another authority (so the engine refuses it).
    let certs = d.join("client-dir");
    std::fs::create_dir(&certs).unwrap();
    std::fs::copy(d.join("engine-ca.pem"), certs.join("ca.pem")).unwrap();
    std::fs::copy(d.join("client.pem"), certs.join("cert.pem")).unwrap();
    std::fs::copy(d.join("client-key.pem"), certs.join("key.pem")).unwrap();

    let port = free_port();
    let server = TlsServer(
        Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                "-accept",
                &format!("127.0.0.1:{port}"),
                "-Verify",
                "1",
                "-verify_return_error",
                "-CAfile",
                "engine-ca.pem",
                "-cert",
                "server.pem",
                "-key",
                "server-key.pem",
            ])
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    // Ready when it accepts a connection (it answers nothing until a handshake).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the TLS server did not listen"
        );
        std::thread::yield_now();
    }
    let tcp = format!("tcp://127.0.0.1:{port}");
    let certs = certs.to_str().unwrap();
    refused(
        &repo,
        &[
            ("DOCKER_HOST", &tcp),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", certs),
        ],
        &tcp,
        &format!("the TLS handshake with {tcp} failed: the certificates in DOCKER_CERT_PATH ({certs}) must be the engine's"),
    );
    // No certificates where DOCKER_CERT_PATH says.
    let missing = d.join("missing");
    let missing = missing.to_str().unwrap();
    refused(
        &repo,
        &[
            ("DOCKER_HOST", &tcp),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", missing),
        ],
        &tcp,
        &format!(
            "DOCKER_CERT_PATH ({missing}) must be a directory holding ca.pem, cert.pem and key.pem"
        ),
    );
    drop(server);

    // And the engine the suite runs against, when it is one behind TLS: its own authority,
    // a client certificate of another.
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    let real = std::env::var("DOCKER_CERT_PATH").unwrap_or_default();
    if host.starts_with("tcp://") && !real.is_empty() {
        let bad = d.join("bad-for-real");
        std::fs::create_dir(&bad).unwrap();
        std::fs::copy(Path::new(&real).join("ca.pem"), bad.join("ca.pem")).unwrap();
        std::fs::copy(d.join("client.pem"), bad.join("cert.pem")).unwrap();
        std::fs::copy(d.join("client-key.pem"), bad.join("key.pem")).unwrap();
        let bad = bad.to_str().unwrap();
        refused(
            &repo,
            &[("DOCKER_TLS_VERIFY", "1"), ("DOCKER_CERT_PATH", bad)],
            &host,
            &format!("the TLS handshake with {host} failed"),
        );
    }
}

/// The engine the suite runs against, as `DOCKER_HOST` names it, is local when it is a unix
/// socket (or unset) and the engine's own files are on this host.
fn engine_is_local() -> bool {
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    let root = docker(&["info", "--format", "{{.DockerRootDir}}|{{.Driver}}"]);
    let (root, driver) = root.trim().split_once('|').unwrap();
    (host.is_empty() || host.starts_with("unix://"))
        && driver.contains("overlay")
        && Path::new(root).join("containers").is_dir()
}

#[test]
fn the_change_is_read_from_the_upper_layer_only_on_a_local_engine() {
    require_base_image();
    let repo = project("engine-mechanism");
    let (code, units, err) = repo.run(&["--unit", "u"]);
    assert_eq!(code, 0, "{err}\n{units:?}");
    let u = &units[0];
    let dir = u["attempt_dir"].as_str().unwrap();
    let changes: serde_json::Value =
        serde_json::from_slice(&std::fs::read(Path::new(dir).join("changes.json")).unwrap())
            .unwrap();
    let expected = if engine_is_local() { "upper" } else { "log" };
    assert_eq!(
        changes["listing"],
        expected,
        "engine {:?}: {changes}",
        std::env::var("DOCKER_HOST")
    );
    assert_eq!(
        repo.git(&["show", "boxdelegate/u:README.md"]),
        "hello\nchanged"
    );
}

#[test]
fn doctor_names_the_engine_kind_and_its_address() {
    let repo = project("engine-doctor");
    let out = repo.cmd().args(["doctor", "--json"]).output().unwrap();
    let v = final_json(&out.stdout);
    let components = docker(&[
        "version",
        "--format",
        "{{range .Server.Components}}{{.Name}};{{end}}",
    ]);
    let kind = if components.contains("Podman") {
        "podman"
    } else {
        "docker"
    };
    assert_eq!(v["engine"]["kind"], kind, "{components}: {v}");
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    let endpoint = v["engine"]["endpoint"].as_str().unwrap();
    if host.is_empty() {
        assert!(endpoint.starts_with("unix://"), "{v}");
    } else {
        assert_eq!(endpoint, host, "{v}");
    }
    let text = stdout(&repo.cmd().arg("doctor").output().unwrap());
    assert!(
        text.starts_with(&format!("engine     {kind} "))
            && text.contains(&format!(" at {endpoint}\n")),
        "{text}"
    );
}
