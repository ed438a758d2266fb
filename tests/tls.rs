//! TLS and tokens with real processes: a CA and a server certificate made at test time
//! (rcgen), two `merkmail serve` nodes that speak only https on 127.0.0.1, a Merkle session
//! and the replication journal over https, clients that do not trust the CA refused, TLS
//! configuration errors that name the file and the problem, and — with every log line at
//! `trace` — neither the peer token nor the admin token in any log.
//!
//! Every wait is a bounded poll; nothing here asserts how fast anything was.

mod common;

use common::node::{message_file, peer_of, poll, Node, Pki, Setup, HOURLY_CHECKS};
use common::{run, scratch_dir};
use merkmail::status::Outcome;
use std::path::Path;
use std::time::Duration;

const PEER_TOKEN: &str = "peer-7f3a91c2-secret";
const ADMIN_TOKEN: &str = "admin-0be44d17-secret";
const CONVERGE: Duration = Duration::from_secs(30);

/// A CA, and a server certificate it signed for 127.0.0.1 and localhost, as PEM files.
fn make_pki(dir: &Path, name: &str) -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("merkmail test CA {name}"));
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    let pki = Pki {
        ca: dir.join(format!("{name}-ca.pem")),
        cert: dir.join(format!("{name}-cert.pem")),
        key: dir.join(format!("{name}-key.pem")),
    };
    std::fs::write(&pki.ca, ca_cert.pem()).expect("write CA");
    std::fs::write(&pki.cert, cert.pem()).expect("write cert");
    std::fs::write(&pki.key, key.serialize_pem()).expect("write key");
    pki
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// A node that serves https with `pki`'s certificate and trusts `pki`'s CA for its peers,
/// every log line on (trace), an hour between checks.
fn node(root: &Path, name: &str, port: u16, peers: &[u16], pki: &Pki) -> Node {
    let setup = Setup {
        config: HOURLY_CHECKS,
        tls: Some(pki.clone()),
        level: "trace",
        ..Setup::http(PEER_TOKEN, ADMIN_TOKEN)
    };
    Node::new(root, name, port, peers, &setup, "")
}

/// A message file; its path as an argument.
fn message(dir: &Path, name: &str) -> String {
    p(&message_file(dir, name))
}

#[test]
fn two_tls_nodes_reconcile_and_ship_the_journal_over_https_and_log_no_token() {
    let tmp = scratch_dir();
    let root = tmp.path();
    let pki = make_pki(root, "cluster");
    let ports = [common::free_port(), common::free_port()];
    let mut a = node(root, "a", ports[0], &[ports[1]], &pki);
    let mut b = node(root, "b", ports[1], &[ports[0]], &pki);
    a.start();
    for i in 0..3 {
        a.cli(
            &["append"],
            &["alice", "INBOX", &message(root, &format!("a{i}"))],
        )
        .ok();
    }
    let a_root = a.root();

    // A Merkle session over https from a local store that is no node: `sync --data`.
    let c = root.join("c");
    run(&["init", "--data", &p(&c), "--node-id", "c"], None).ok();
    let out = run(
        &[
            "sync",
            "--data",
            &p(&c),
            "--peer",
            &a.url(),
            "--token",
            PEER_TOKEN,
            "--ca",
            &p(&pki.ca),
            "--json",
        ],
        None,
    )
    .ok();
    let report = out.json();
    assert_eq!(report["copied_from_peer"], 3, "{report}");
    let c_root = run(&["root", "--data", &p(&c)], None).ok().stdout_str();
    assert_eq!(
        c_root.trim(),
        a_root,
        "the local store caught up over https"
    );

    // B starts: it catches up with A over https (journal first, Merkle to confirm).
    b.start();
    poll("b caught up with a", CONVERGE, || b.root() == a_root);

    // A write on B travels through B's journal to A, over https.
    b.cli(&["append"], &["bob", "INBOX", &message(root, "b0")])
        .ok();
    let b_root = b.root();
    poll("a got b's write", CONVERGE, || a.root() == b_root);
    let status = b.status();
    let toward_a = peer_of(&status, &a.url());
    assert!(toward_a.reachable, "{toward_a:?}");
    assert!(toward_a.journal.shipped_total >= 1, "{toward_a:?}");
    assert!(!toward_a.runs.is_empty(), "{toward_a:?}");
    assert!(
        toward_a.runs.iter().all(|r| r.outcome != Outcome::Error),
        "{toward_a:?}"
    );

    // `sync --url https://a --peer https://b`: A's server reaches B with its own trust.
    let out = a
        .cli(
            &["sync"],
            &["--peer", &b.url(), "--peer-token", PEER_TOKEN, "--json"],
        )
        .ok();
    assert_eq!(out.json()["equal_after"], true, "{}", out.stdout_str());

    // A client that does not trust the CA is refused, and changes nothing.
    let other = make_pki(root, "other");
    let url = a.url();
    for (what, ca) in [
        ("no --ca (web PKI roots)", None),
        ("another CA", Some(p(&other.ca))),
    ] {
        let mut args = vec!["append", "--url", &url, "--token", ADMIN_TOKEN];
        if let Some(ca) = &ca {
            args.extend(["--ca", ca]);
        }
        let msg = message(root, "refused");
        args.extend(["carol", "INBOX", &msg]);
        let line = run(&args, None).error(&[&url]);
        assert!(
            line.contains("certificate") || line.contains("UnknownIssuer"),
            "{what}: {line}"
        );
        let line = run(&["status", "--url", &url], None).error(&[&url]);
        assert!(line.contains("certificate"), "{what}: {line}");
    }
    // Plain HTTP to a TLS port gets no answer.
    let plain = format!("http://127.0.0.1:{}", ports[0]);
    run(&["root", "--url", &plain, "--token", ADMIN_TOKEN], None).error(&[&plain]);
    assert_eq!(a.root(), b_root, "nothing changed");

    a.stop();
    b.stop();
    // With every log line on (trace), neither token was ever written.
    for node in [&a, &b] {
        let log = node.log();
        assert!(
            log.contains("request") && log.contains("/v1/journal"),
            "{}: the log does not show the requests:\n{log}",
            node.name
        );
        for token in [PEER_TOKEN, ADMIN_TOKEN, "7f3a91c2", "0be44d17"] {
            assert!(!log.contains(token), "{}: a token was logged", node.name);
        }
    }
}

#[test]
fn tls_configuration_errors_name_the_file_and_the_problem_and_bind_nothing() {
    let tmp = scratch_dir();
    let root = tmp.path();
    let pki = make_pki(root, "good");
    let other = make_pki(root, "other");
    let garbage = root.join("garbage.pem");
    std::fs::write(&garbage, "this is not PEM\n").expect("write");
    let missing = root.join("missing.pem");
    let data = root.join("d");
    let port = common::free_port();
    let cases: Vec<(&str, Vec<String>, Vec<String>)> = vec![
        (
            "missing certificate",
            vec![
                "--tls-cert".into(),
                p(&missing),
                "--tls-key".into(),
                p(&pki.key),
            ],
            vec![p(&missing), "tls_cert".into(), "cannot read".into()],
        ),
        (
            "garbage certificate",
            vec![
                "--tls-cert".into(),
                p(&garbage),
                "--tls-key".into(),
                p(&pki.key),
            ],
            vec![p(&garbage), "no certificate".into()],
        ),
        (
            "garbage key",
            vec![
                "--tls-cert".into(),
                p(&pki.cert),
                "--tls-key".into(),
                p(&garbage),
            ],
            vec![p(&garbage), "tls_key".into(), "no private key".into()],
        ),
        (
            "a key that is not the certificate's",
            vec![
                "--tls-cert".into(),
                p(&pki.cert),
                "--tls-key".into(),
                p(&other.key),
            ],
            vec![p(&other.key), p(&pki.cert), "does not belong".into()],
        ),
        (
            "a key given as the CA",
            vec!["--tls-ca".into(), p(&pki.key)],
            vec![p(&pki.key), "tls_ca".into(), "no certificate".into()],
        ),
        (
            "a certificate without its key",
            vec!["--tls-cert".into(), p(&pki.cert)],
            vec!["--tls-key".into()],
        ),
    ];
    for (what, flags, needles) in cases {
        let mut args = vec![
            "serve".to_string(),
            "--data".into(),
            p(&data),
            "--node-id".into(),
            "n".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(flags);
        let out = run(&args, None);
        assert!(out.stdout.is_empty(), "{what}: it listened: {out:?}");
        assert!(!out.success(), "{what}: {out:?}");
        for n in &needles {
            assert!(
                out.stderr.contains(n.as_str()),
                "{what}: no {n:?} in {}",
                out.stderr
            );
        }
        assert!(!data.exists(), "{what}: the store was created");
    }
    // A client's CA file is checked the same way.
    let line = run(
        &["root", "--url", "https://127.0.0.1:1", "--ca", &p(&garbage)],
        None,
    )
    .error(&[&p(&garbage)]);
    assert!(line.contains("no certificate"), "{line}");
    let line = run(
        &[
            "status",
            "--url",
            "https://127.0.0.1:1",
            "--ca",
            &p(&missing),
        ],
        None,
    )
    .error(&[&p(&missing)]);
    assert!(line.contains("cannot read"), "{line}");
}

/// In process: a client that opens a TLS connection and never finishes the handshake is cut
/// off at the header deadline, plain HTTP on the TLS port gets no HTTP answer, and the server
/// keeps serving https.
#[test]
fn a_stalled_or_plain_client_on_the_tls_port_is_cut_off() {
    use merkmail::net::client::{BlockingClient, ClientConfig};
    use merkmail::net::tls::{ClientTls, ServerTls};
    use merkmail::net::{Limits, ServerState};
    use std::io::{Read, Write};
    use std::sync::Arc;

    let tmp = scratch_dir();
    let pki = make_pki(tmp.path(), "inproc");
    let tls = ServerTls::from_pem_files(&pki.cert, &pki.key).expect("server TLS");
    let store = Arc::new(merkmail::store::Store::in_memory("tls").expect("store"));
    let limits = Limits {
        header_read_timeout: Duration::from_millis(300),
        max_connections: 4,
        ..Limits::default()
    };
    let state = Arc::new(
        ServerState::new(Arc::clone(&store), Some(PEER_TOKEN), limits)
            .with_admin_token(Some(ADMIN_TOKEN))
            .with_tls(Some(tls)),
    );
    let mut server = common::InProcessServer::spawn(store, state);
    let addr = server.addr;
    let config = ClientConfig {
        tls: Some(ClientTls::from_ca_file(&pki.ca).expect("CA")),
        ..ClientConfig::default()
    };
    let url = format!("https://{addr}");
    let healthy = || {
        let c = BlockingClient::new(&url, None, config.clone()).expect("client");
        c.get("/healthz").expect("https answer").0.as_u16()
    };
    assert_eq!(healthy(), 200);

    // More stalled handshakes than the connection cap: each is closed at the header deadline
    // (the read ends), so the slots come back.
    let mut stalled: Vec<std::net::TcpStream> = (0..6)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            s.write_all(&[0x16, 0x03, 0x01])
                .expect("a first byte or three");
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            s
        })
        .collect();
    for s in &mut stalled {
        let mut buf = Vec::new();
        // Closed by the server (EOF or a reset), not left hanging until our read timeout.
        if let Err(e) = s.read_to_end(&mut buf) {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "a stalled handshake was never cut off"
            );
        }
        assert!(buf.is_empty() || buf[0] == 0x15, "not a TLS alert: {buf:?}");
    }
    assert_eq!(
        healthy(),
        200,
        "the server serves after the stalled handshakes"
    );

    // Plain HTTP on the TLS port: no HTTP answer.
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "{buf:?}"
    );
    assert_eq!(healthy(), 200);

    server.begin_shutdown();
    assert!(
        server.wait(Duration::from_secs(15)),
        "the server did not stop"
    );
}
