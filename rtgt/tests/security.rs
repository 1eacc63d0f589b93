//! "Nobody gets in who shouldn't": CHAP (one-way, mutual, discovery) and
//! initiator ACLs, configured with rtgtadm as with tgtadm, checked through
//! the in-repo initiator and libiscsi's tools (skipped, with a message,
//! when they are not installed).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{have, sparse_file, Daemon};
use initiator::{Connection, Error, LoginOptions};

const IQN: &str = "iqn.2026-11.io.rtgt.test:security";

const USER: &str = "alice";
const SECRET: &str = "alice-secret-1";
const TARGET_USER: &str = "tgt-out";
const TARGET_SECRET: &str = "target-secret-9";

/// 0x0201 (RFC 7143 §11.13.5).
const AUTHENTICATION_FAILURE: (u8, u8) = (2, 1);
/// 0x0202.
const AUTHORIZATION_FAILURE: (u8, u8) = (2, 2);

fn setup(tag: &str) -> Daemon {
    let d = Daemon::start(tag);
    let img = sparse_file(&d.dir, "disk.img", 16 << 20);
    d.file_target(1, IQN, &img, false);
    d
}

fn new_account(d: &Daemon, user: &str, password: &str) {
    d.must(&[
        "--lld",
        "iscsi",
        "--op",
        "new",
        "--mode",
        "account",
        "--user",
        user,
        "--password",
        password,
    ]);
}

/// Bind `user` to target `tid` (`None`: the global / discovery binding).
fn bind_account(d: &Daemon, tid: Option<u32>, user: &str, outgoing: bool) {
    let t = tid.map(|t| t.to_string());
    let mut args = vec!["--lld", "iscsi", "--op", "bind", "--mode", "account"];
    if let Some(t) = &t {
        args.extend(["--tid", t]);
    }
    args.extend(["--user", user]);
    if outgoing {
        args.push("--outgoing");
    }
    d.must(&args);
}

fn opts(target: Option<&str>) -> LoginOptions {
    LoginOptions {
        initiator_name: "iqn.2026-11.io.rtgt:security-it".into(),
        target_name: target.map(str::to_owned),
        timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

fn creds(u: &str, p: &str) -> Option<(String, String)> {
    Some((u.into(), p.into()))
}

/// The login's (class, detail), (0, 0) when it succeeded.
fn status(d: &Daemon, o: &LoginOptions) -> (u8, u8) {
    let a = Connection::login_raw(d.portal, o).expect("login ran");
    (a.class, a.detail)
}

#[test]
fn chap_one_way_and_mutual_through_the_rust_initiator() {
    let d = setup("chap");
    // No account bound yet: no authentication required.
    assert_eq!(status(&d, &opts(Some(IQN))), (0, 0));

    new_account(&d, USER, SECRET);
    bind_account(&d, Some(1), USER, false);

    // No credentials, wrong secret, unknown user: all 0x0201.
    let mut o = opts(Some(IQN));
    assert_eq!(status(&d, &o), AUTHENTICATION_FAILURE, "no CHAP");
    o.chap = creds(USER, "wrong-secret-x");
    assert_eq!(status(&d, &o), AUTHENTICATION_FAILURE, "wrong secret");
    o.chap = creds("mallory", SECRET);
    assert_eq!(status(&d, &o), AUTHENTICATION_FAILURE, "unknown user");

    // The right secret, with each algorithm (IANA codes 5, 6, 7, 8).
    o.chap = creds(USER, SECRET);
    for algs in [vec![5], vec![6], vec![7], vec![8], vec![7, 5], vec![99, 5]] {
        o.chap_algorithms = algs.clone();
        let (mut c, n) =
            Connection::login(d.portal, &o).unwrap_or_else(|e| panic!("CHAP_A={algs:?}: {e}"));
        let chosen: u8 = n.get("CHAP_A").unwrap().parse().unwrap();
        assert_eq!(chosen, *algs.iter().find(|&&a| a != 99).unwrap());
        let inq = c.inquiry(1).unwrap();
        assert_eq!(inq[0] & 0x1f, 0, "a disk behind CHAP");
    }
    o.chap_algorithms = vec![7, 5];

    // Mutual without an outgoing account bound: 0x0201.
    let mut m = o.clone();
    m.chap_target = creds(TARGET_USER, TARGET_SECRET);
    assert_eq!(
        status(&d, &m),
        AUTHENTICATION_FAILURE,
        "no outgoing account"
    );

    new_account(&d, TARGET_USER, TARGET_SECRET);
    bind_account(&d, Some(1), TARGET_USER, true);
    let (mut c, n) = Connection::login(d.portal, &m).expect("mutual CHAP");
    assert_eq!(n.get("CHAP_N"), Some(TARGET_USER));
    c.inquiry(1).unwrap();
    // One-way still works with an outgoing account bound.
    assert_eq!(status(&d, &o), (0, 0));

    // The target proving a secret the initiator does not expect.
    m.chap_target = creds(TARGET_USER, "not-the-target-secret");
    match Connection::login(d.portal, &m) {
        Err(Error::Negotiation(e)) => assert!(e.contains("mutual"), "{e}"),
        other => panic!(
            "expected a mutual CHAP failure, got {:?}",
            other.map(|_| ())
        ),
    }
    // ... or a different name.
    m.chap_target = creds("someone-else", TARGET_SECRET);
    assert!(Connection::login(d.portal, &m).is_err());

    // Unbinding the account reopens the target.
    d.must(&[
        "--lld", "iscsi", "--op", "unbind", "--mode", "account", "--tid", "1", "--user", USER,
    ]);
    assert_eq!(status(&d, &opts(Some(IQN))), (0, 0));
    assert!(d.log().contains("CHAP authenticated"));
}

#[test]
fn discovery_chap_uses_the_global_accounts() {
    let d = setup("disc");
    new_account(&d, USER, SECRET);
    // Bound to the target only: discovery stays open.
    bind_account(&d, Some(1), USER, false);
    assert_eq!(status(&d, &opts(None)), (0, 0));

    bind_account(&d, None, USER, false);
    let mut o = opts(None);
    assert_eq!(status(&d, &o), AUTHENTICATION_FAILURE, "no CHAP");
    o.chap = creds(USER, "wrong-secret-x");
    assert_eq!(status(&d, &o), AUTHENTICATION_FAILURE, "wrong secret");
    o.chap = creds(USER, SECRET);
    let (mut c, _) = Connection::login(d.portal, &o).expect("discovery CHAP");
    let targets = c.send_targets("All").unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].0, IQN);

    // Mutual with the global outgoing account.
    o.chap_target = creds(TARGET_USER, TARGET_SECRET);
    assert_eq!(status(&d, &o), AUTHENTICATION_FAILURE, "no global outgoing");
    new_account(&d, TARGET_USER, TARGET_SECRET);
    bind_account(&d, None, TARGET_USER, true);
    Connection::login(d.portal, &o).expect("mutual discovery CHAP");
    o.chap_target = creds(TARGET_USER, "not-the-target-secret");
    assert!(Connection::login(d.portal, &o).is_err());
}

#[test]
fn acl_bound_elsewhere_keeps_us_out_of_login_and_discovery() {
    let d = setup("acl");
    d.must(&[
        "--lld", "iscsi", "--op", "unbind", "--mode", "target", "--tid", "1", "-I", "ALL",
    ]);
    d.must(&[
        "--lld", "iscsi", "--op", "bind", "--mode", "target", "--tid", "1", "-I", "10.9.9.9",
    ]);
    assert_eq!(status(&d, &opts(Some(IQN))), AUTHORIZATION_FAILURE);
    // Good CHAP credentials do not override the ACL.
    new_account(&d, USER, SECRET);
    bind_account(&d, Some(1), USER, false);
    let mut o = opts(Some(IQN));
    o.chap = creds(USER, SECRET);
    assert_eq!(status(&d, &o), AUTHORIZATION_FAILURE);
    // A target that does not exist is 0x0203.
    assert_eq!(
        status(&d, &opts(Some("iqn.2026-11.io.rtgt.test:nope"))),
        (2, 3)
    );

    let (mut c, _) = Connection::login(d.portal, &opts(None)).expect("discovery");
    assert!(
        c.send_targets("All").unwrap().is_empty(),
        "hidden by the ACL"
    );

    if !have("iscsi-ls") {
        eprintln!("skipped: iscsi-ls not installed");
        return;
    }
    let out = Command::new("iscsi-ls")
        .args(["-s", &format!("iscsi://{}", d.portal)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(IQN), "{text}");
}

/// Run iscsi-inq on `url`; whether it succeeded and what it printed.
fn inq(url: &str) -> (bool, String) {
    let out = Command::new("iscsi-inq").arg(url).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success() && text.contains("Product:VIRTUAL-DISK"),
        text,
    )
}

#[test]
fn chap_through_libiscsi() {
    if !have("iscsi-inq") || !have("iscsi-ls") {
        eprintln!("skipped: libiscsi tools (iscsi-inq, iscsi-ls) not installed");
        return;
    }
    let d = setup("libiscsi");
    new_account(&d, USER, SECRET);
    bind_account(&d, Some(1), USER, false);
    let p = d.portal;

    let (ok, text) = inq(&format!("iscsi://{USER}%{SECRET}@{p}/{IQN}/1"));
    assert!(ok, "right secret: {text}");
    let (ok, text) = inq(&format!("iscsi://{USER}%wrong-secret-x@{p}/{IQN}/1"));
    assert!(!ok, "wrong secret: {text}");
    let (ok, text) = inq(&format!("iscsi://{p}/{IQN}/1"));
    assert!(!ok, "no secret: {text}");

    // Mutual: libiscsi takes the target's identity from the URL query.
    new_account(&d, TARGET_USER, TARGET_SECRET);
    bind_account(&d, Some(1), TARGET_USER, true);
    let (ok, text) = inq(&format!(
        "iscsi://{USER}%{SECRET}@{p}/{IQN}/1?target_user={TARGET_USER}&target_password={TARGET_SECRET}"
    ));
    assert!(ok, "mutual: {text}");
    let (ok, text) = inq(&format!(
        "iscsi://{USER}%{SECRET}@{p}/{IQN}/1?target_user={TARGET_USER}&target_password=not-the-target-secret"
    ));
    assert!(!ok, "target proving the wrong secret: {text}");

    // Discovery with global accounts.
    bind_account(&d, None, USER, false);
    let ls = |url: String| {
        let out = Command::new("iscsi-ls").arg(url).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        !ls(format!("iscsi://{p}")).contains(IQN),
        "discovery without CHAP"
    );
    let text = ls(format!("iscsi://{USER}%{SECRET}@{p}"));
    assert!(text.contains(IQN), "discovery with CHAP: {text}");
}
