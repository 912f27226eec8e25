//! Network partitions for tests, as Jepsen makes them: a network namespace of the test's own,
//! joined to the host by a veth pair (a private /30: the host end and the namespace end), in
//! which a test runs workers and clients ([`Namespace::command`]). [`Namespace::partition`]
//! drops every packet between the namespace and the host with `iptables` inside the
//! namespace (DROP: the peers see neither FIN nor RST, their connections go half-open);
//! [`Namespace::lose`] drops a share of the packets at random.
//!
//! Servers the namespace must reach listen on [`Namespace::host_ip`] (see
//! [`crate::PrivateServers::start_on`]). Everything lives in the namespace or on its veth
//! pair, so the host's own firewall and routes are never touched, and deleting the namespace
//! (on drop, even after a failed assertion) removes the rules and the pair.
//! Namespaces left by a test process that was killed are deleted by the next one.
//!
//! Needs root, `ip`, `ss` and `iptables` (Debian: iproute2, iptables; `scripts/install-deps.sh`).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

/// Names of this harness's namespaces start with this, then the test process's pid.
const PREFIX: &str = "rask-";

/// A network namespace with a veth pair to the host; deleted on drop.
pub struct Namespace {
    name: String,
    host_veth: String,
    inside_veth: String,
    host_ip: Ipv4Addr,
    inside_ip: Ipv4Addr,
}

impl Namespace {
    /// Creates a namespace, its veth pair and their addresses; panics with the tool's error
    /// (a partition test cannot go on without it). First deletes namespaces of this harness
    /// whose test process is gone.
    pub fn create() -> Self {
        remove_stale();
        let pid = std::process::id();
        // Interface names are at most 15 bytes: `rh` / `rn` and 8 hex digits.
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let (host_ip, inside_ip) = free_subnet();
        let ns = Namespace {
            name: format!("{PREFIX}{pid}-{tag}"),
            host_veth: format!("rh{tag}"),
            inside_veth: format!("rn{tag}"),
            host_ip,
            inside_ip,
        };
        run("ip", &["netns", "add", &ns.name]);
        // From here on, drop cleans up whatever was made.
        run(
            "ip",
            &[
                "link",
                "add",
                &ns.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                &ns.inside_veth,
            ],
        );
        run("ip", &["link", "set", &ns.inside_veth, "netns", &ns.name]);
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                &ns.host_veth,
            ],
        );
        run("ip", &["link", "set", &ns.host_veth, "up"]);
        ns.inside(
            "ip",
            &[
                "addr",
                "add",
                &format!("{inside_ip}/30"),
                "dev",
                &ns.inside_veth,
            ],
        );
        ns.inside("ip", &["link", "set", &ns.inside_veth, "up"]);
        ns.inside("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// The host's address on the pair: where servers the namespace uses must listen.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.host_ip
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command running `program` inside the namespace (`ip netns exec NAME program`, which
    /// execs it: the child's pid is the program's).
    pub fn command(&self, program: &Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Drops every packet between the namespace and the host until the returned guard is
    /// healed or dropped: connections stay open on both sides, unanswered.
    pub fn partition(&self) -> Partition<'_> {
        let host = self.host_ip.to_string();
        self.inside("iptables", &["-I", "INPUT", "-s", &host, "-j", "DROP"]);
        self.inside("iptables", &["-I", "OUTPUT", "-d", &host, "-j", "DROP"]);
        Partition {
            ns: self,
            healed: false,
        }
    }

    /// Drops `percent` % of the packets between the namespace and the host, at random, each
    /// way (`iptables -m statistic`): TCP retransmits them, late. (This machine's kernel has
    /// no `netem` qdisc; latency comes from [`crate::slow_link::DelayProxy`].)
    pub fn lose(&self, percent: f64) {
        let host = self.host_ip.to_string();
        let probability = format!("{}", percent / 100.0);
        let random = [
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &probability,
        ];
        for (chain, side) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
            let mut args = vec!["-A", chain, side, &host];
            args.extend(random);
            args.extend(["-j", "DROP"]);
            self.inside("iptables", &args);
        }
    }

    /// Makes the host forget every TCP connection from the namespace to its `port`, at once
    /// and without a word the namespace could hear (`ss -K`; its RST is dropped while a
    /// partition is in force): what a host that crashes and reboots loses. The namespace's
    /// ends stay open, waiting for a peer that no longer knows them.
    pub fn forget_connections_to(&self, port: u16) {
        run(
            "ss",
            &[
                "-K",
                "-t",
                "dst",
                &self.inside_ip.to_string(),
                "sport",
                "=",
                &format!(":{port}"),
            ],
        );
    }

    /// Runs `program ARGS` inside the namespace; panics if it fails.
    fn inside(&self, program: &str, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all);
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes its rules, its end of the pair and so the pair; the
        // host end is deleted too in case a process still inside keeps the namespace alive.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_veth])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A partition in force (see [`Namespace::partition`]); healed on drop.
pub struct Partition<'a> {
    ns: &'a Namespace,
    healed: bool,
}

impl Partition<'_> {
    /// Lets packets through again.
    pub fn heal(mut self) {
        self.lift();
    }

    fn lift(&mut self) {
        if std::mem::replace(&mut self.healed, true) {
            return;
        }
        let host = self.ns.host_ip.to_string();
        self.ns
            .inside("iptables", &["-D", "INPUT", "-s", &host, "-j", "DROP"]);
        self.ns
            .inside("iptables", &["-D", "OUTPUT", "-d", &host, "-j", "DROP"]);
    }
}

impl Drop for Partition<'_> {
    fn drop(&mut self) {
        if !self.healed && !std::thread::panicking() {
            self.lift();
        }
    }
}

/// Runs `program ARGS`; panics with its output if it fails.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} (install iproute2 and iptables): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed (partition tests need root): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A /30 in 10.231.0.0/16 that no interface of the host uses yet: (host end, namespace end).
fn free_subnet() -> (Ipv4Addr, Ipv4Addr) {
    let used = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .expect("ip runs")
            .stdout,
    )
    .into_owned();
    loop {
        let n: u16 = (uuid::Uuid::new_v4().as_u128() % (1 << 14)) as u16;
        let base = u32::from(Ipv4Addr::new(10, 231, 0, 0)) + u32::from(n) * 4;
        let host = Ipv4Addr::from(base + 1);
        if !used.contains(&format!(" {host}/")) {
            return (host, Ipv4Addr::from(base + 2));
        }
    }
}

/// Deletes the namespaces of this harness whose test process no longer runs.
fn remove_stale() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
