//! slirp4netns-compatible command line.
//!
//! Callers (rootlesskit, podman, shell scripts) start us exactly as they start slirp4netns 1.2,
//! so parsing follows GNU `getopt_long` (options and operands interleave, `--opt=v` or
//! `--opt v`, clustered short options, `--`, unique prefixes of long names) and every error text
//! is the reference's, word for word, because scripts grep them. `lexopt` splits the words;
//! long-name prefixes are resolved here because lexopt only matches whole names.
//!
//! Every option lives in one table, [`OPTIONS`], with a `supported` flag. An option rslirp does
//! not implement yet is still parsed and validated (a bad value gets the reference's error),
//! then rejected with `--name is not supported yet`, and it stays out of `--help`: callers
//! detect features by searching the help text, so listing an option we would reject breaks
//! them. Enabling an option is a one-line change in that table; `--help` and
//! `SLIRP_CONFIG_VERSION_MAX` follow from it.
//!
//! Checks run in the reference's order, which decides which error wins when several apply:
//! option values as they come (`--exit-fd`, `--ready-fd`, `--mtu`, `--userns-path`), then
//! `--macaddress` without `-c`, `--target-type`, the operands, and last the values the
//! reference only looks at during setup (CIDR, MAC, socket path, outbound address). The
//! reference prints the usage after the early errors but not after the late ones;
//! [`CliError::show_usage`] says which.

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use rslirp_stack::api::ForwardRequest;
use rslirp_stack::forward::ForwardProto;
use rslirp_stack::VirtualNetwork;

/// What the command line asks for.
// One value per process: its size does not matter, and boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Command {
    /// Set up the network and run.
    Run(Options),
    /// `-h`/`--help`: the usage text, ending in a newline; print it as is on stdout, exit 0.
    Help(String),
    /// `-v`/`--version`: the version text, ending in a newline; print it as is on stdout, exit 0.
    Version(String),
}

/// How the `PID|PATH|FD` operand names the network namespace (`--netns-type`).
#[derive(Debug, Clone, PartialEq)]
pub enum NetnsType {
    /// A process id whose network namespace is joined (the default).
    Pid,
    /// A network namespace file such as `/run/netns/NAME`.
    Path,
    /// An already-open tap fd inherited from the caller.
    TapFd,
}

impl NetnsType {
    /// The `--netns-type` value, as in [`NETNS_TYPES`].
    pub fn name(&self) -> &'static str {
        match self {
            NetnsType::Pid => "pid",
            NetnsType::Path => "path",
            NetnsType::TapFd => "tapfd",
        }
    }
}

/// What rslirp serves (`--target-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetType {
    /// A tap in a network namespace (or an inherited tap fd): the default.
    Netns,
    /// A BESS peer (User Mode Linux's `vec0:transport=bess`): rslirp listens on a
    /// SOCK_SEQPACKET Unix socket, accepts one peer and carries one Ethernet frame per
    /// message.
    Bess,
}

impl TargetType {
    /// The `--target-type` value, as in [`TARGET_TYPES`].
    pub fn name(&self) -> &'static str {
        match self {
            TargetType::Netns => "netns",
            TargetType::Bess => "bess",
        }
    }
}

/// A validated command line for [`Command::Run`].
#[derive(Debug, Clone)]
pub struct Options {
    /// `-c`: bring up lo and the tap inside the namespace.
    pub configure: bool,
    /// `-e FD`: exit cleanly when this fd reports hang-up.
    pub exit_fd: Option<i32>,
    /// `-r FD`: write `1` here once ready, then close it.
    pub ready_fd: Option<i32>,
    /// `-m N`: 1..=65521.
    pub mtu: u32,
    /// `-6`.
    pub enable_ipv6: bool,
    /// `-a PATH`: shorter than [`SUN_PATH_MAX`] bytes.
    pub api_socket: Option<PathBuf>,
    /// `--cidr`, default 10.0.2.0/24; with its IPv6 prefix from `--cidr6` (ours), default
    /// fd00::/64.
    pub network: VirtualNetwork,
    pub disable_host_loopback: bool,
    pub target_type: TargetType,
    /// Meaningful with [`TargetType::Netns`] only (`--netns-type` conflicts with bess).
    pub netns_type: NetnsType,
    /// The `PID|PATH|FD` operand (the socket path with bess) as given.
    pub target: String,
    /// The operand parsed as a process id, for [`NetnsType::Pid`] only.
    pub pid: Option<i32>,
    /// The operand parsed as an fd, for [`NetnsType::TapFd`] only.
    pub tap_fd: Option<i32>,
    /// The socket to listen on, for [`TargetType::Bess`] only.
    pub bess_socket: Option<PathBuf>,
    /// The `TAPNAME` operand: `tap0` when absent with `pid` and `path`; with `tapfd` as
    /// given or empty (unused: the fd's own name comes from TUNGETIFF); empty with bess.
    pub tap_name: String,
    pub userns_path: Option<PathBuf>,
    pub enable_sandbox: bool,
    pub enable_seccomp: bool,
    /// `--outbound-addr`: an IPv4 address or an interface name.
    pub outbound_addr: Option<String>,
    /// `--outbound-addr6`: an IPv6 address or an interface name.
    pub outbound_addr6: Option<String>,
    pub disable_dns: bool,
    /// `--macaddress` (only with `-c`).
    pub mac_address: Option<[u8; 6]>,
    /// `--pcap FILE`: capture every tap frame there (ours, not the reference's).
    pub pcap: Option<PathBuf>,
    /// `--pcap-size BYTES`: the capture file's size bound, header included.
    pub pcap_size: u64,
    /// `--publish` (ours), in the order given: forwards set up before the ready byte.
    pub publish: Vec<Publish>,
    /// `--outbound-if IFNAME` (ours): IPv4 host sockets of outbound flows are bound to
    /// this interface (SO_BINDTODEVICE).
    pub outbound_if: Option<String>,
    /// `--outbound-if6 IFNAME` (ours): the same for IPv6.
    pub outbound_if6: Option<String>,
}

/// One `--publish [PROTO/][HOSTADDR:]HOSTPORT[-END]:GUESTPORT[-END]`: host ports forwarded
/// to the guest's ports one to one, each as one forward (one listener per port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub proto: ForwardProto,
    /// `None` when left out: every address, as `add_hostfwd` without `host_addr`.
    pub host_addr: Option<IpAddr>,
    /// The first and last host port (equal for a single port).
    pub host_ports: (u16, u16),
    /// The guest port the first host port goes to; the others follow in order.
    pub guest_port: u16,
}

impl Publish {
    /// The forwards, one per host port, as `add_hostfwd` requests (guest address left to
    /// the default, the guest's address).
    pub fn requests(&self) -> impl Iterator<Item = ForwardRequest> + '_ {
        (self.host_ports.0..=self.host_ports.1).map(move |host_port| ForwardRequest {
            proto: self.proto,
            host_addr: self.host_addr,
            host_port,
            guest_addr: None,
            // Cannot overflow: the parser checked that the guest range has the same length.
            guest_port: self.guest_port + (host_port - self.host_ports.0),
        })
    }
}

impl Options {
    /// The part of the command line the pure stack needs; everything else keeps its default.
    pub fn stack_config(&self) -> rslirp_stack::Config {
        rslirp_stack::Config {
            network: self.network,
            // Lossless: the MTU is at most MAX_MTU.
            mtu: self.mtu as usize,
            disable_host_loopback: self.disable_host_loopback,
            enable_ipv6: self.enable_ipv6,
            disable_dns: self.disable_dns,
            ..rslirp_stack::Config::default()
        }
    }
}

/// An error to print on stderr (one line) before exiting 1; `show_usage` adds the usage text
/// after it, as the reference does for that case. (The reference prints that usage on
/// stdout; SPEC.md asks for stderr, so that a caller reading our stdout never mistakes it for
/// output.)
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub message: String,
    pub show_usage: bool,
}

impl CliError {
    /// An error the reference reports while parsing options, followed by the usage.
    fn with_usage(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            show_usage: true,
        }
    }

    /// An error the reference only finds during setup, reported without the usage.
    fn plain(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            show_usage: false,
        }
    }
}

pub const DEFAULT_MTU: u32 = 1500;
/// The largest MTU the reference accepts (65535 minus the 14-byte Ethernet header).
pub const MAX_MTU: u32 = 65521;
pub const DEFAULT_TAP_NAME: &str = "tap0";
/// `sizeof(sockaddr_un.sun_path)` on Linux: a socket path needs room for its NUL there.
pub const SUN_PATH_MAX: usize = 108;
/// Linux `IFNAMSIZ`, including the NUL.
const IFNAMSIZ: usize = 16;
/// The slirp4netns release whose interface we reproduce; `-v` reports it first.
const REFERENCE_VERSION: &str = "1.2.0";

/// Every option, one variant each; deprecated spellings map onto the same variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opt {
    Configure,
    ExitFd,
    ReadyFd,
    Mtu,
    EnableIpv6,
    ApiSocket,
    Cidr,
    Cidr6,
    DisableHostLoopback,
    NetnsType,
    UsernsPath,
    EnableSandbox,
    EnableSeccomp,
    OutboundAddr,
    OutboundAddr6,
    DisableDns,
    MacAddress,
    TargetType,
    Pcap,
    PcapSize,
    Publish,
    OutboundIf,
    OutboundIf6,
    Help,
    Version,
}

/// Options added after the ones existing callers may abbreviate (the reference's and
/// `--pcap`/`--pcap-size`). getopt_long resolves a unique prefix of any long name, so a new
/// name could turn a prefix that resolved (or was reported ambiguous with a given list)
/// into something else. These take part in prefix matching only when no older option
/// matches, so every abbreviation keeps its old meaning and its old error text.
/// (`cidr6` extends `cidr`: as an equal candidate it would make `--ci` and `--cid`, which
/// mean `--cidr` to the reference, ambiguous.)
const LATER_OPTIONS: &[Opt] = &[Opt::Cidr6, Opt::Publish, Opt::OutboundIf, Opt::OutboundIf6];

/// One row of [`OPTIONS`].
struct OptSpec {
    opt: Opt,
    short: Option<char>,
    long: &'static str,
    /// Deprecated long names the reference still accepts: matched like `long`, never shown.
    aliases: &'static [&'static str],
    /// The placeholder shown in `--help` (`FD`, `PATH`...) when the option requires a value.
    value_name: Option<&'static str>,
    /// The `--help` description; `{values}` expands to the supported `values` and default.
    help: &'static str,
    /// The named values of an option that takes one from a fixed set.
    values: &'static [ValueSpec],
    /// Whether rslirp implements the option today. Unsupported options are validated, then
    /// rejected, and left out of `--help`.
    supported: bool,
}

/// One value of an option with a fixed set of values (`--netns-type`, `--target-type`).
struct ValueSpec {
    name: &'static str,
    /// Whether rslirp implements this value today; like [`OptSpec::supported`].
    supported: bool,
    /// The value the option has when absent.
    default: bool,
}

const NETNS_TYPES: &[ValueSpec] = &[
    ValueSpec {
        name: "path",
        supported: true,
        default: false,
    },
    ValueSpec {
        name: "pid",
        supported: true,
        default: true,
    },
    ValueSpec {
        name: "tapfd",
        supported: true,
        default: false,
    },
];

const TARGET_TYPES: &[ValueSpec] = &[
    ValueSpec {
        name: "netns",
        supported: true,
        default: true,
    },
    ValueSpec {
        name: "bess",
        supported: true,
        default: false,
    },
];

/// The options, in the reference's `--help` order. Ambiguous prefixes list their candidates
/// in this order too.
const OPTIONS: &[OptSpec] = &[
    OptSpec {
        opt: Opt::Configure,
        short: Some('c'),
        long: "configure",
        aliases: &[],
        value_name: None,
        help: "bring up the interface",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::ExitFd,
        short: Some('e'),
        long: "exit-fd",
        aliases: &[],
        value_name: Some("FD"),
        help: "specify the FD for terminating slirp4netns",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::ReadyFd,
        short: Some('r'),
        long: "ready-fd",
        aliases: &[],
        value_name: Some("FD"),
        help: "specify the FD to write to when the network is configured",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::Mtu,
        short: Some('m'),
        long: "mtu",
        aliases: &[],
        value_name: Some("MTU"),
        help: "specify MTU (default=1500, max=65521)",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::EnableIpv6,
        short: Some('6'),
        long: "enable-ipv6",
        aliases: &[],
        value_name: None,
        help: "enable IPv6",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::ApiSocket,
        short: Some('a'),
        long: "api-socket",
        aliases: &[],
        value_name: Some("PATH"),
        help: "specify API socket path",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::Cidr,
        short: None,
        long: "cidr",
        aliases: &[],
        value_name: Some("CIDR"),
        help: "specify network address CIDR (default=10.0.2.0/24)",
        values: &[],
        supported: true,
    },
    // Ours (the reference's IPv6 prefix is fixed), added later (see LATER_OPTIONS).
    OptSpec {
        opt: Opt::Cidr6,
        short: None,
        long: "cidr6",
        aliases: &[],
        value_name: Some("PREFIX"),
        help: "specify IPv6 prefix, a /64, with -6 (default=fd00::/64)",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::DisableHostLoopback,
        short: None,
        long: "disable-host-loopback",
        aliases: &["no-host-loopback"],
        value_name: None,
        help: "prohibit connecting to 127.0.0.1:* on the host namespace",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::NetnsType,
        short: None,
        long: "netns-type",
        aliases: &[],
        value_name: Some("TYPE"),
        help: "specify network namespace type ({values})",
        values: NETNS_TYPES,
        supported: true,
    },
    OptSpec {
        opt: Opt::UsernsPath,
        short: None,
        long: "userns-path",
        aliases: &[],
        value_name: Some("PATH"),
        help: "specify user namespace path",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::EnableSandbox,
        short: None,
        long: "enable-sandbox",
        aliases: &["create-sandbox"],
        value_name: None,
        help: "create a new mount namespace (and drop all caps except CAP_NET_BIND_SERVICE if running as the root)",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::EnableSeccomp,
        short: None,
        long: "enable-seccomp",
        aliases: &[],
        value_name: None,
        help: "enable seccomp to limit syscalls",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::OutboundAddr,
        short: None,
        long: "outbound-addr",
        aliases: &[],
        value_name: Some("IPv4"),
        help: "sets outbound ipv4 address to bound to",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::OutboundAddr6,
        short: None,
        long: "outbound-addr6",
        aliases: &[],
        value_name: Some("IPv6"),
        help: "sets outbound ipv6 address to bound to",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::DisableDns,
        short: None,
        long: "disable-dns",
        aliases: &[],
        value_name: None,
        help: "disables 10.0.2.3 (or configured internal ip) to host dns redirect",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::MacAddress,
        short: None,
        long: "macaddress",
        aliases: &[],
        value_name: Some("MAC"),
        help: "specify the MAC address of the TAP (only valid with -c)",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::TargetType,
        short: None,
        long: "target-type",
        aliases: &[],
        value_name: Some("TYPE"),
        help: "specify the target type ({values})",
        values: TARGET_TYPES,
        supported: true,
    },
    // Ours from here on (the reference has no capture).
    OptSpec {
        opt: Opt::Pcap,
        short: None,
        long: "pcap",
        aliases: &[],
        value_name: Some("FILE"),
        help: "write every frame crossing the tap to FILE (pcap format, for tcpdump/wireshark)",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::PcapSize,
        short: None,
        long: "pcap-size",
        aliases: &[],
        value_name: Some("BYTES"),
        help: "stop capturing when FILE would exceed BYTES (suffix K, M or G; default=100M)",
        values: &[],
        supported: true,
    },
    // Ours, added later (see LATER_OPTIONS). No short forms: letters are left free for
    // options the reference may add.
    OptSpec {
        opt: Opt::Publish,
        short: None,
        long: "publish",
        aliases: &[],
        value_name: Some("SPEC"),
        help: "forward host ports to the guest from the start, SPEC being \
               [tcp/|udp/][HOSTADDR:]HOSTPORT[-END]:GUESTPORT[-END] (repeatable)",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::OutboundIf,
        short: None,
        long: "outbound-if",
        aliases: &[],
        value_name: Some("IFNAME"),
        help: "bind outbound IPv4 host sockets to interface IFNAME (SO_BINDTODEVICE)",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::OutboundIf6,
        short: None,
        long: "outbound-if6",
        aliases: &[],
        value_name: Some("IFNAME"),
        help: "bind outbound IPv6 host sockets to interface IFNAME (SO_BINDTODEVICE)",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::Help,
        short: Some('h'),
        long: "help",
        aliases: &[],
        value_name: None,
        help: "show this help and exit",
        values: &[],
        supported: true,
    },
    OptSpec {
        opt: Opt::Version,
        short: Some('v'),
        long: "version",
        aliases: &[],
        value_name: None,
        help: "show version and exit",
        values: &[],
        supported: true,
    },
];

impl OptSpec {
    /// Whether `--help` lists the option. An option with named values is only worth listing
    /// when a value other than its default works (`--target-type` with only `netns` adds
    /// nothing; a caller seeing it would assume `bess` works).
    fn listed_in_help(&self) -> bool {
        self.supported
            && (self.values.is_empty() || self.values.iter().any(|v| v.supported && !v.default))
    }

    /// The option's `--help` line: the option column padded to the reference's width.
    fn help_line(&self) -> String {
        let mut left = match self.short {
            Some(short) => format!("-{short}, --{}", self.long),
            None => format!("--{}", self.long),
        };
        if let Some(value_name) = self.value_name {
            left = format!("{left}={value_name}");
        }
        let description = self.help.replace("{values}", &self.values_text());
        format!("{left:<23}  {description}")
    }

    /// `[path|pid], default=pid`: the supported values and the default.
    fn values_text(&self) -> String {
        let names: Vec<&str> = self
            .values
            .iter()
            .filter(|v| v.supported)
            .map(|v| v.name)
            .collect();
        let default = self
            .values
            .iter()
            .find(|v| v.default)
            .map_or("", |v| v.name);
        format!("[{}], default={default}", names.join("|"))
    }
}

fn spec_of(opt: Opt) -> Option<&'static OptSpec> {
    OPTIONS.iter().find(|spec| spec.opt == opt)
}

fn is_supported(opt: Opt) -> bool {
    spec_of(opt).is_some_and(|spec| spec.supported)
}

/// The usage text `--help` prints (ending in a newline): the reference's layout, listing
/// only the options that work.
pub fn usage(argv0: &str) -> String {
    let mut text = format!(
        "Usage: {argv0} [OPTION]... PID|PATH|FD [TAPNAME]\n\
         User-mode networking for unprivileged network namespaces.\n\n"
    );
    for spec in OPTIONS.iter().filter(|spec| spec.listed_in_help()) {
        text.push_str(&spec.help_line());
        text.push('\n');
    }
    // Where a newcomer goes next. No option names here: callers probe this text for them.
    text.push_str(
        "\nControl a running instance (port forwards, counters, flows) with rslirpctl.\n\
         Manual: rslirp(1), docs/rslirp.1.md in the source tree.\n",
    );
    text
}

/// The `SLIRP_CONFIG_VERSION_MAX` we report. Callers read it as a feature level rather than
/// as a libslirp detail: >= 2 means `--outbound-addr` works, >= 3 `--disable-dns`, and 4
/// (what the reference reports with libslirp 4.7) also the IPv6 configuration. So each level
/// needs its options and every lower level's to be supported; never claim a level whose
/// options we would reject.
fn slirp_config_version_max(is_supported: impl Fn(Opt) -> bool) -> u32 {
    let levels: [&[Opt]; 3] = [
        &[Opt::OutboundAddr, Opt::OutboundAddr6],
        &[Opt::DisableDns],
        &[Opt::EnableIpv6],
    ];
    let reached = levels
        .iter()
        .take_while(|opts| opts.iter().all(|&opt| is_supported(opt)))
        .count();
    // At most 3 levels above the base of 1.
    1 + reached as u32
}

/// The `--version` text (ending in a newline), in the reference's five-line shape, which
/// callers parse.
fn version_text() -> String {
    let ours = env!("CARGO_PKG_VERSION");
    // Set by build.rs from git; a build from a tarball has no commit to report.
    let commit = option_env!("RSLIRP_GIT_COMMIT")
        .filter(|c| !c.is_empty())
        .unwrap_or("unknown");
    format!(
        "slirp4netns version {REFERENCE_VERSION}+rslirp.{ours}\n\
         commit: {commit}\n\
         libslirp: rslirp {ours}\n\
         SLIRP_CONFIG_VERSION_MAX: {}\n\
         libseccomp: {}\n",
        slirp_config_version_max(is_supported),
        crate::sandbox::SECCOMP_LIBRARY
    )
}

/// Parse the arguments after `argv0` (which only appears in messages and the usage).
pub fn parse(argv0: &str, args: impl IntoIterator<Item = OsString>) -> Result<Command, CliError> {
    let mut parser = lexopt::Parser::from_args(args);
    // getopt keeps the `=` of `-m=1500` as part of the value; so do we.
    parser.set_short_equals(false);
    let mut collected = Collected::default();
    while let Some(token) = next_token(&mut parser, argv0)? {
        match token {
            Token::Operand(operand) => collected.operands.push(operand),
            // getopt handles options in order, so a help or version request wins over an
            // error in a later option but not over one in an earlier option.
            Token::Option(spec, _) if spec.opt == Opt::Help => {
                return Ok(Command::Help(usage(argv0)))
            }
            Token::Option(spec, _) if spec.opt == Opt::Version => {
                return Ok(Command::Version(version_text()))
            }
            Token::Option(spec, value) => collected.apply(spec, value.unwrap_or_default())?,
        }
    }
    collected.finish(argv0).map(Command::Run)
}

/// One option (with its value, when it takes one) or one operand.
enum Token {
    Option(&'static OptSpec, Option<OsString>),
    Operand(OsString),
}

fn next_token(parser: &mut lexopt::Parser, argv0: &str) -> Result<Option<Token>, CliError> {
    let arg = match parser.next() {
        Ok(Some(arg)) => arg,
        Ok(None) => return Ok(None),
        // lexopt only fails on a `--name=value` left unconsumed, and `long_token` always
        // consumes it; kept as an ordinary usage error rather than a panic.
        Err(err) => return Err(CliError::with_usage(format!("{argv0}: {err}"))),
    };
    let token = match arg {
        lexopt::Arg::Value(operand) => Token::Operand(operand),
        lexopt::Arg::Short(short) => short_token(parser, argv0, short)?,
        lexopt::Arg::Long(name) => {
            let name = name.to_owned();
            long_token(parser, argv0, &name)?
        }
    };
    Ok(Some(token))
}

fn short_token(parser: &mut lexopt::Parser, argv0: &str, short: char) -> Result<Token, CliError> {
    let spec = OPTIONS
        .iter()
        .find(|spec| spec.short == Some(short))
        .ok_or_else(|| CliError::with_usage(format!("{argv0}: invalid option -- '{short}'")))?;
    if spec.value_name.is_none() {
        return Ok(Token::Option(spec, None));
    }
    // `-r3` or `-r 3`; the next word is taken even if it starts with `-`, as getopt does.
    let value = parser.value().map_err(|_| {
        CliError::with_usage(format!("{argv0}: option requires an argument -- '{short}'"))
    })?;
    Ok(Token::Option(spec, Some(value)))
}

fn long_token(parser: &mut lexopt::Parser, argv0: &str, name: &str) -> Result<Token, CliError> {
    let attached = parser.optional_value();
    // getopt quotes unknown and ambiguous options as typed, `=value` included.
    let as_typed = || match &attached {
        Some(value) => format!("--{name}={}", value.to_string_lossy()),
        None => format!("--{name}"),
    };
    let (spec, matched) = match lookup_long(name) {
        LongMatch::Found(spec, matched) => (spec, matched),
        LongMatch::Unknown => {
            return Err(CliError::with_usage(format!(
                "{argv0}: unrecognized option '{}'",
                as_typed()
            )))
        }
        LongMatch::Ambiguous(candidates) => {
            let candidates: Vec<String> = candidates.iter().map(|c| format!("'--{c}'")).collect();
            return Err(CliError::with_usage(format!(
                "{argv0}: option '{}' is ambiguous; possibilities: {}",
                as_typed(),
                candidates.join(" ")
            )));
        }
    };
    match (spec.value_name, attached) {
        (None, None) => Ok(Token::Option(spec, None)),
        (None, Some(_)) => Err(CliError::with_usage(format!(
            "{argv0}: option '--{matched}' doesn't allow an argument"
        ))),
        (Some(_), Some(value)) => Ok(Token::Option(spec, Some(value))),
        (Some(_), None) => {
            let value = parser.value().map_err(|_| {
                CliError::with_usage(format!(
                    "{argv0}: option '--{matched}' requires an argument"
                ))
            })?;
            Ok(Token::Option(spec, Some(value)))
        }
    }
}

enum LongMatch {
    /// The option and the name it matched (an alias keeps its own name in messages).
    Found(&'static OptSpec, &'static str),
    Unknown,
    Ambiguous(Vec<&'static str>),
}

/// getopt_long's matching: an exact name wins, otherwise a prefix of exactly one option;
/// the [`LATER_OPTIONS`] only when no other option has the prefix.
fn lookup_long(name: &str) -> LongMatch {
    match lookup_among(name, |opt| !LATER_OPTIONS.contains(&opt)) {
        LongMatch::Unknown => lookup_among(name, |opt| LATER_OPTIONS.contains(&opt)),
        found_or_ambiguous => found_or_ambiguous,
    }
}

/// getopt_long's matching over the options `included` selects.
fn lookup_among(name: &str, included: impl Fn(Opt) -> bool) -> LongMatch {
    let all_names = || {
        OPTIONS
            .iter()
            .filter(|spec| included(spec.opt))
            .flat_map(|spec| {
                std::iter::once(spec.long)
                    .chain(spec.aliases.iter().copied())
                    .map(move |long| (spec, long))
            })
    };
    if let Some((spec, long)) = all_names().find(|&(_, long)| long == name) {
        return LongMatch::Found(spec, long);
    }
    let candidates: Vec<(&'static OptSpec, &'static str)> = all_names()
        .filter(|&(_, long)| long.starts_with(name))
        .collect();
    match candidates.as_slice() {
        [] => LongMatch::Unknown,
        // getopt only calls a prefix ambiguous when the candidates mean different things.
        [(first, long), rest @ ..] if rest.iter().all(|(spec, _)| spec.opt == first.opt) => {
            LongMatch::Found(first, long)
        }
        _ => LongMatch::Ambiguous(candidates.iter().map(|&(_, long)| long).collect()),
    }
}

/// Option values as given; the late checks run in [`Collected::finish`].
#[derive(Default)]
struct Collected {
    configure: bool,
    exit_fd: Option<i32>,
    ready_fd: Option<i32>,
    mtu: Option<u32>,
    enable_ipv6: bool,
    api_socket: Option<PathBuf>,
    cidr: Option<OsString>,
    cidr6: Option<OsString>,
    disable_host_loopback: bool,
    netns_type: Option<OsString>,
    userns_path: Option<PathBuf>,
    enable_sandbox: bool,
    enable_seccomp: bool,
    outbound_addr: Option<OsString>,
    outbound_addr6: Option<OsString>,
    disable_dns: bool,
    mac_address: Option<OsString>,
    target_type: Option<OsString>,
    pcap: Option<PathBuf>,
    pcap_size: Option<u64>,
    publish: Vec<Publish>,
    outbound_if: Option<OsString>,
    outbound_if6: Option<OsString>,
    operands: Vec<OsString>,
    /// The first option given that rslirp does not implement, rejected once all is validated.
    first_unsupported: Option<&'static OptSpec>,
}

impl Collected {
    /// Record one option; `value` is empty for options without one. As with getopt, a
    /// repeated option overrides the earlier one.
    fn apply(&mut self, spec: &'static OptSpec, value: OsString) -> Result<(), CliError> {
        if !spec.supported && self.first_unsupported.is_none() {
            self.first_unsupported = Some(spec);
        }
        match spec.opt {
            Opt::Configure => self.configure = true,
            Opt::ExitFd => {
                self.exit_fd = Some(parse_fd(&value).ok_or_else(|| {
                    CliError::with_usage("exit-fd must be a non-negative integer")
                })?)
            }
            Opt::ReadyFd => {
                self.ready_fd = Some(parse_fd(&value).ok_or_else(|| {
                    CliError::with_usage("ready-fd must be a non-negative integer")
                })?)
            }
            Opt::Mtu => {
                self.mtu = Some(parse_mtu(&value).ok_or_else(|| {
                    CliError::with_usage("MTU must be a positive integer (< 65522)")
                })?)
            }
            Opt::EnableIpv6 => self.enable_ipv6 = true,
            Opt::ApiSocket => self.api_socket = Some(value.into()),
            Opt::Cidr => self.cidr = Some(value),
            Opt::Cidr6 => self.cidr6 = Some(value),
            Opt::DisableHostLoopback => self.disable_host_loopback = true,
            Opt::NetnsType => self.netns_type = Some(value),
            Opt::UsernsPath => {
                let path = PathBuf::from(value);
                if !path.exists() {
                    return Err(CliError::with_usage(format!(
                        "userns path doesn't exist: {}",
                        path.display()
                    )));
                }
                self.userns_path = Some(path);
            }
            Opt::EnableSandbox => self.enable_sandbox = true,
            Opt::EnableSeccomp => self.enable_seccomp = true,
            Opt::OutboundAddr => self.outbound_addr = Some(value),
            Opt::OutboundAddr6 => self.outbound_addr6 = Some(value),
            Opt::DisableDns => self.disable_dns = true,
            Opt::MacAddress => self.mac_address = Some(value),
            Opt::TargetType => self.target_type = Some(value),
            Opt::Pcap => self.pcap = Some(value.into()),
            Opt::PcapSize => {
                self.pcap_size = Some(parse_size(&value).ok_or_else(|| {
                    CliError::plain(format!(
                        "--pcap-size must be a number of bytes of at least {}, optionally \
                         followed by K, M or G: {}",
                        crate::pcap::FILE_HEADER_LEN,
                        value.to_string_lossy()
                    ))
                })?)
            }
            // Repeatable: each adds its forwards.
            Opt::Publish => self.publish.push(parse_publish(&value)?),
            Opt::OutboundIf => self.outbound_if = Some(value),
            Opt::OutboundIf6 => self.outbound_if6 = Some(value),
            // Answered by `parse` before they get here; nothing to record.
            Opt::Help | Opt::Version => {}
        }
        Ok(())
    }

    /// The checks after the last option, in the reference's order.
    fn finish(self, argv0: &str) -> Result<Options, CliError> {
        if self.mac_address.is_some() && !self.configure {
            return Err(CliError::with_usage(
                "--macaddr cannot be specified when --configure or -c is not specified",
            ));
        }
        let target_type = parse_target_type(self.target_type.as_deref())?;
        let (netns_type, target, pid, tap_fd, bess_socket, tap_name) = match target_type {
            TargetType::Bess => {
                let path = self.check_bess(argv0)?;
                let target = path.to_string_lossy().into_owned();
                (
                    NetnsType::Pid,
                    target,
                    None,
                    None,
                    Some(path),
                    String::new(),
                )
            }
            TargetType::Netns => {
                let netns_type = parse_netns_type(self.netns_type.as_deref())?;
                let mut operands = self.operands.into_iter();
                let target = operands.next().ok_or_else(|| {
                    CliError::with_usage(format!("{argv0}: missing PID|PATH|FD operand"))
                })?;
                let tap_name = operands.next();
                if operands.next().is_some() {
                    return Err(CliError::plain("too many arguments"));
                }
                let (target, pid, tap_fd) = check_target(&netns_type, target)?;
                let tap_name = match tap_name {
                    // With tapfd the fd names its own interface; TAPNAME is optional.
                    None if netns_type == NetnsType::TapFd => String::new(),
                    None => DEFAULT_TAP_NAME.to_string(),
                    Some(name) => name.into_string().map_err(|name| {
                        CliError::plain(format!(
                            "TAPNAME must be valid UTF-8: {}",
                            name.to_string_lossy()
                        ))
                    })?,
                };
                (netns_type, target, pid, tap_fd, None, tap_name)
            }
        };

        let network = match &self.cidr {
            None => VirtualNetwork::default(),
            Some(cidr) => VirtualNetwork::parse(&cidr.to_string_lossy())
                .map_err(|err| CliError::plain(err.to_string()))?,
        };
        let network = match &self.cidr6 {
            None => network,
            Some(prefix) => network.with_ipv6_prefix(check_cidr6(prefix, self.enable_ipv6)?),
        };
        let mac_address = self.mac_address.as_deref().map(parse_mac).transpose()?;
        if let Some(path) = &self.api_socket {
            check_api_socket(path)?;
        }
        let outbound_addr = self
            .outbound_addr
            .as_deref()
            .map(|addr| check_outbound(addr, AddrFamily::V4))
            .transpose()?;
        let outbound_addr6 = self
            .outbound_addr6
            .as_deref()
            .map(|addr| check_outbound(addr, AddrFamily::V6))
            .transpose()?;

        let outbound_if = self
            .outbound_if
            .as_deref()
            .map(|name| check_interface_name(name, "outbound-if"))
            .transpose()?;
        let outbound_if6 = self
            .outbound_if6
            .as_deref()
            .map(|name| check_interface_name(name, "outbound-if6"))
            .transpose()?;

        if self.pcap_size.is_some() && self.pcap.is_none() {
            return Err(CliError::plain("--pcap-size needs --pcap FILE"));
        }
        // The inherited fds are ours to own and close; one fd cannot be two of them.
        if let Some(fd) = tap_fd {
            if self.ready_fd == Some(fd) || self.exit_fd == Some(fd) {
                return Err(CliError::plain(format!(
                    "TAPFD {fd} is also the ready-fd or the exit-fd"
                )));
            }
        }

        // Everything is valid; now refuse what we cannot do yet.
        if let Some(spec) = self.first_unsupported {
            return Err(not_supported(&format!("--{}", spec.long)));
        }
        let netns_type_name = netns_type.name();
        if NETNS_TYPES
            .iter()
            .any(|v| v.name == netns_type_name && !v.supported)
        {
            return Err(not_supported(&format!("--netns-type={netns_type_name}")));
        }

        Ok(Options {
            configure: self.configure,
            exit_fd: self.exit_fd,
            ready_fd: self.ready_fd,
            mtu: self.mtu.unwrap_or(DEFAULT_MTU),
            enable_ipv6: self.enable_ipv6,
            api_socket: self.api_socket,
            network,
            disable_host_loopback: self.disable_host_loopback,
            target_type,
            netns_type,
            target,
            pid,
            tap_fd,
            bess_socket,
            tap_name,
            userns_path: self.userns_path,
            enable_sandbox: self.enable_sandbox,
            enable_seccomp: self.enable_seccomp,
            outbound_addr,
            outbound_addr6,
            disable_dns: self.disable_dns,
            mac_address,
            pcap: self.pcap,
            pcap_size: self.pcap_size.unwrap_or(crate::pcap::DEFAULT_SIZE_LIMIT),
            publish: self.publish,
            outbound_if,
            outbound_if6,
        })
    }
}

impl Collected {
    /// `--target-type=bess`: one operand, the socket path, and none of the options that
    /// only make sense with a namespace; the reference's checks, texts and order.
    fn check_bess(&self, argv0: &str) -> Result<PathBuf, CliError> {
        let path = match self.operands.as_slice() {
            [] => {
                return Err(CliError::with_usage(format!(
                    "{argv0}: missing PATH operand"
                )))
            }
            [path] => PathBuf::from(path),
            _ => return Err(CliError::with_usage("too many arguments")),
        };
        if self.configure {
            return Err(CliError::with_usage(
                "--configure conflicts with --target-type=bess",
            ));
        }
        if self.netns_type.is_some() {
            return Err(CliError::with_usage(
                "--netns-type conflicts with --target-type=bess",
            ));
        }
        if self.userns_path.is_some() {
            return Err(CliError::with_usage(
                "--userns-path conflicts with --target-type=bess",
            ));
        }
        // The reference finds this only when it binds (in its child, without the usage).
        if path.as_os_str().len() >= SUN_PATH_MAX {
            return Err(CliError::plain(format!(
                "the specified BESS socket path is too long (>= {SUN_PATH_MAX})"
            )));
        }
        Ok(path)
    }
}

/// `--cidr6` (ours): a /64 for the IPv6 side, which only exists with `-6`; a prefix without
/// it would be silently unused, so it is an error, as `--macaddress` without `-c` is.
fn check_cidr6(prefix: &OsStr, enable_ipv6: bool) -> Result<rslirp_stack::Ipv6Prefix, CliError> {
    if !enable_ipv6 {
        return Err(CliError::plain("--cidr6 needs --enable-ipv6 (-6)"));
    }
    rslirp_stack::Ipv6Prefix::parse(&prefix.to_string_lossy())
        .map_err(|err| CliError::plain(format!("--cidr6: {err}")))
}

fn not_supported(what: &str) -> CliError {
    CliError::plain(format!("{what} is not supported yet"))
}

/// `--target-type`: `netns` (the default) or `bess`, which changes what the operands mean
/// (one socket path, no namespace).
fn parse_target_type(value: Option<&OsStr>) -> Result<TargetType, CliError> {
    let Some(value) = value else {
        return Ok(TargetType::Netns);
    };
    match TARGET_TYPES.iter().find(|v| value == OsStr::new(v.name)) {
        None => Err(CliError::with_usage(
            "--target-type must be either \"netns\" or \"bess\"",
        )),
        Some(v) if !v.supported => Err(not_supported(&format!("--target-type={}", v.name))),
        Some(v) if v.name == "bess" => Ok(TargetType::Bess),
        Some(_) => Ok(TargetType::Netns),
    }
}

/// The reference treats any `--netns-type` other than `pid` as `path`; we name the mistake.
fn parse_netns_type(value: Option<&OsStr>) -> Result<NetnsType, CliError> {
    let Some(value) = value else {
        return Ok(NetnsType::Pid);
    };
    match value.to_str() {
        Some("pid") => Ok(NetnsType::Pid),
        Some("path") => Ok(NetnsType::Path),
        Some("tapfd") => Ok(NetnsType::TapFd),
        _ => Err(CliError::with_usage(
            "--netns-type must be either \"pid\", \"path\" or \"tapfd\"",
        )),
    }
}

/// Validate the `PID|PATH|FD` operand for its `--netns-type`; returns it as text and, for
/// a pid or an fd, parsed.
fn check_target(
    netns_type: &NetnsType,
    target: OsString,
) -> Result<(String, Option<i32>, Option<i32>), CliError> {
    match netns_type {
        NetnsType::Pid => {
            let pid = target
                .to_str()
                .and_then(parse_c_integer)
                .and_then(|n| i32::try_from(n).ok())
                .filter(|&n| n > 0)
                .ok_or_else(|| CliError::with_usage("PID must be a positive integer"))?;
            Ok((target.to_string_lossy().into_owned(), Some(pid), None))
        }
        NetnsType::Path => {
            // The reference's access(F_OK) check and perror() text.
            if let Err(err) = std::fs::metadata(&target) {
                return Err(CliError::with_usage(format!(
                    "existing path expected when --netns-type=path: {}",
                    os_error_text(&err)
                )));
            }
            let target = target.into_string().map_err(|path| {
                CliError::plain(format!(
                    "PATH must be valid UTF-8: {}",
                    path.to_string_lossy()
                ))
            })?;
            Ok((target, None, None))
        }
        NetnsType::TapFd => {
            // The reference's text, its missing "be" included: scripts match it.
            let fd = parse_fd(&target)
                .ok_or_else(|| CliError::with_usage("TAPFD must a file descriptor"))?;
            Ok((target.to_string_lossy().into_owned(), None, Some(fd)))
        }
    }
}

/// An io::Error as perror() prints it: the strerror text without Rust's "(os error N)".
fn os_error_text(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(end) => text[..end].to_string(),
        None => text,
    }
}

/// The reference parses numbers with `strtol(s, &end, 10)` and requires `*end == '\0'`:
/// leading white space and a sign are allowed, trailing characters and overflow are not.
/// Unlike strtol we refuse the empty string (strtol reads it as 0, which would make
/// `--ready-fd ''` mean stdin).
fn parse_c_integer(text: &str) -> Option<i64> {
    text.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r'])
        .parse()
        .ok()
}

fn parse_fd(value: &OsStr) -> Option<i32> {
    value
        .to_str()
        .and_then(parse_c_integer)
        .and_then(|n| i32::try_from(n).ok())
        .filter(|&n| n >= 0)
}

fn parse_mtu(value: &OsStr) -> Option<u32> {
    value
        .to_str()
        .and_then(parse_c_integer)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (1..=MAX_MTU).contains(n))
}

/// `--pcap-size`: a byte count with an optional binary suffix (`64K`, `100M`, `1g`), at
/// least the pcap header's size so that the file is always valid.
fn parse_size(value: &OsStr) -> Option<u64> {
    let text = value.to_str()?;
    let (digits, shift) = match text.char_indices().last()? {
        (at, 'k' | 'K') => (&text[..at], 10),
        (at, 'm' | 'M') => (&text[..at], 20),
        (at, 'g' | 'G') => (&text[..at], 30),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse::<u64>()
        .ok()?
        .checked_mul(1 << shift)
        .filter(|&bytes| bytes >= crate::pcap::FILE_HEADER_LEN)
}

/// `XX:XX:XX:XX:XX:XX` with one or two hex digits per byte, as `ether_aton` reads it.
fn parse_mac(value: &OsStr) -> Result<[u8; 6], CliError> {
    let invalid = || {
        CliError::plain(format!(
            "\"{}\" is an invalid MAC address.",
            value.to_string_lossy()
        ))
    };
    let text = value.to_str().ok_or_else(invalid)?;
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(invalid)?;
        if part.is_empty() || part.len() > 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
    }
    if parts.next().is_some() {
        return Err(invalid());
    }
    Ok(mac)
}

/// A unix socket path must fit `sun_path` with its NUL; the reference would truncate it
/// silently and listen somewhere else.
fn check_api_socket(path: &Path) -> Result<(), CliError> {
    let len = path.as_os_str().len();
    if len >= SUN_PATH_MAX {
        return Err(CliError::plain(format!(
            "API socket path must be shorter than {SUN_PATH_MAX} bytes (it has {len}): {}",
            path.display()
        )));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum AddrFamily {
    V4,
    V6,
}

/// `--outbound-addr[6]`: an address of the right family, or something that can be a Linux
/// interface name (whether that interface exists is only known at setup).
fn check_outbound(value: &OsStr, family: AddrFamily) -> Result<String, CliError> {
    let (option, family_name) = match family {
        AddrFamily::V4 => ("outbound-addr", "ipv4"),
        AddrFamily::V6 => ("outbound-addr6", "ipv6"),
    };
    let invalid = || {
        CliError::plain(format!(
            "{option} has to be valid {family_name} address or interface name."
        ))
    };
    let text = value.to_str().ok_or_else(invalid)?;
    let is_v4 = text.parse::<Ipv4Addr>().is_ok();
    let is_v6 = text.parse::<Ipv6Addr>().is_ok();
    let valid = match family {
        AddrFamily::V4 => is_v4 || (!is_v6 && is_interface_name(text)),
        AddrFamily::V6 => is_v6 || (!is_v4 && is_interface_name(text)),
    };
    if valid {
        Ok(text.to_string())
    } else {
        Err(invalid())
    }
}

/// The kernel's `dev_valid_name`: 1..IFNAMSIZ-1 bytes, not `.` or `..`, no `/`, `:` or space.
fn is_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

/// `--outbound-if[6]`: something that can be a Linux interface name; whether it exists
/// is checked at setup, in the namespace rslirp's host sockets live in.
fn check_interface_name(value: &OsStr, option: &str) -> Result<String, CliError> {
    match value.to_str() {
        Some(name) if is_interface_name(name) => Ok(name.to_string()),
        _ => Err(CliError::plain(format!(
            "--{option} has to be a valid interface name: \"{}\"",
            value.to_string_lossy()
        ))),
    }
}

/// The `--publish` syntax, for error messages.
const PUBLISH_SYNTAX: &str = "[tcp/|udp/][HOSTADDR:]HOSTPORT[-END]:GUESTPORT[-END]";

/// `--publish [PROTO/][HOSTADDR:]HOSTPORT[-END]:GUESTPORT[-END]`: PROTO `tcp` (default) or
/// `udp`; HOSTADDR an IPv4 address or an IPv6 one in brackets (`[::1]:8080:80`), every
/// address when left out; a host range and a guest range of the same length map one to one.
fn parse_publish(value: &OsStr) -> Result<Publish, CliError> {
    let text = value.to_string_lossy();
    parse_publish_text(&text).map_err(|why| {
        CliError::plain(format!(
            "invalid --publish \"{text}\": {why} (expected {PUBLISH_SYNTAX})"
        ))
    })
}

fn parse_publish_text(text: &str) -> Result<Publish, String> {
    let (proto, rest) = match text.split_once('/') {
        None => (ForwardProto::Tcp, text),
        Some(("tcp", rest)) => (ForwardProto::Tcp, rest),
        Some(("udp", rest)) => (ForwardProto::Udp, rest),
        // `-p 8080:80/udp` as docker writes it.
        Some((ports, proto @ ("tcp" | "udp"))) => {
            return Err(format!("the protocol comes first, as in {proto}/{ports}"))
        }
        Some((proto, _)) => return Err(format!("unknown protocol \"{proto}\" (tcp or udp)")),
    };
    let (host_addr, ports) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (addr, ports) = bracketed
            .split_once("]:")
            .ok_or("an IPv6 host address needs its closing bracket and a colon after it")?;
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("\"{addr}\" is not an IPv6 address"))?;
        (Some(IpAddr::V6(addr)), ports)
    } else {
        match rest.matches(':').count() {
            0 => return Err("no guest port".to_string()),
            1 => (None, rest),
            2 => {
                let (addr, ports) = rest.split_once(':').unwrap_or_default();
                let addr: Ipv4Addr = addr.parse().map_err(|_| {
                    format!("\"{addr}\" is not an IPv4 address (IPv6 goes in brackets)")
                })?;
                (Some(IpAddr::V4(addr)), ports)
            }
            _ => return Err("an IPv6 host address goes in brackets, as [::1]:8080:80".into()),
        }
    };
    let (host, guest) = ports
        .split_once(':')
        .ok_or("no guest port after the host address")?;
    let host_ports = parse_port_range(host)?;
    let guest_ports = parse_port_range(guest)?;
    let len = |(first, last): (u16, u16)| u32::from(last - first) + 1;
    if len(host_ports) != len(guest_ports) {
        return Err(format!(
            "{} host ports ({host}) but {} guest ports ({guest})",
            len(host_ports),
            len(guest_ports)
        ));
    }
    Ok(Publish {
        proto,
        host_addr,
        host_ports,
        guest_port: guest_ports.0,
    })
}

/// `PORT` or `FIRST-LAST`, ports 1 to 65535, FIRST <= LAST.
fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (first, last) = match text.split_once('-') {
        Some((first, last)) => (parse_port(first)?, parse_port(last)?),
        None => {
            let port = parse_port(text)?;
            (port, port)
        }
    };
    if last < first {
        return Err(format!("port range {text} ends before it starts"));
    }
    Ok((first, last))
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("\"{text}\" is not a port number"));
    }
    match text.parse::<u32>() {
        Ok(0) => Err("port 0 cannot be published".to_string()),
        Ok(port) if port <= u32::from(u16::MAX) => Ok(port as u16),
        _ => Err(format!("port {text} is beyond 65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARGV0: &str = "rslirp";

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    fn run(words: &[&str]) -> Options {
        match parse(ARGV0, args(words)) {
            Ok(Command::Run(options)) => options,
            other => panic!("{words:?}: expected Run, got {other:?}"),
        }
    }

    fn error(words: &[&str]) -> CliError {
        match parse(ARGV0, args(words)) {
            Err(err) => err,
            Ok(other) => panic!("{words:?}: expected an error, got {other:?}"),
        }
    }

    /// The error text, checking it is reported with the usage as the reference does.
    fn error_with_usage(words: &[&str]) -> String {
        let err = error(words);
        assert!(err.show_usage, "{words:?}: usage expected after {err}");
        err.message
    }

    /// The error text, checking it is reported without the usage as the reference does.
    fn error_without_usage(words: &[&str]) -> String {
        let err = error(words);
        assert!(!err.show_usage, "{words:?}: no usage expected after {err}");
        err.message
    }

    /// Each case's arguments are refused with its error text and with the usage.
    fn assert_errors_with_usage(cases: &[(&[&str], &str)]) {
        for (words, message) in cases {
            assert_eq!(error_with_usage(words), *message, "{words:?}");
        }
    }

    /// Each case's arguments are refused, with the usage, as ambiguous: the first word is
    /// the abbreviation, the text the long names it could mean, as getopt lists them.
    fn assert_ambiguous(cases: &[(&[&str], &str)]) {
        for (words, candidates) in cases {
            assert_eq!(
                error_with_usage(words),
                format!(
                    "rslirp: option '{}' is ambiguous; possibilities: {candidates}",
                    words[0]
                ),
            );
        }
    }

    /// Each case's arguments are refused with its error text and without the usage.
    fn assert_errors_without_usage(cases: &[(&[&str], &str)]) {
        for (words, message) in cases {
            assert_eq!(error_without_usage(words), *message, "{words:?}");
        }
    }

    fn help_text(words: &[&str]) -> String {
        match parse(ARGV0, args(words)) {
            Ok(Command::Help(text)) => text,
            other => panic!("{words:?}: expected Help, got {other:?}"),
        }
    }

    /// A path that exists on every test machine.
    fn existing_path() -> String {
        std::env::temp_dir().to_string_lossy().into_owned()
    }

    const MISSING_PATH: &str = "/nonexistent-rslirp-test/ns";

    #[test]
    fn defaults() {
        let o = run(&["1234"]);
        assert!(!o.configure);
        assert_eq!(o.exit_fd, None);
        assert_eq!(o.ready_fd, None);
        assert_eq!(o.mtu, 1500);
        assert!(!o.enable_ipv6);
        assert_eq!(o.api_socket, None);
        assert_eq!(o.network, VirtualNetwork::default());
        assert!(!o.disable_host_loopback);
        assert_eq!(o.netns_type, NetnsType::Pid);
        assert_eq!(o.target, "1234");
        assert_eq!(o.pid, Some(1234));
        assert_eq!(o.tap_name, "tap0");
        assert_eq!(o.userns_path, None);
        assert!(!o.enable_sandbox && !o.enable_seccomp && !o.disable_dns);
        assert_eq!(o.outbound_addr, None);
        assert_eq!(o.outbound_addr6, None);
        assert_eq!(o.mac_address, None);
        assert!(o.publish.is_empty());
        assert_eq!((o.outbound_if, o.outbound_if6), (None, None));
    }

    #[test]
    fn operands_interleave_with_options() {
        for words in [
            &["1234", "--mtu", "9000", "tap1", "-c"][..],
            &["--mtu", "9000", "1234", "tap1", "-c"],
            &["-c", "1234", "--mtu=9000", "tap1"],
            &["1234", "tap1", "-c", "-m", "9000"],
        ] {
            let o = run(words);
            assert_eq!(
                (o.pid, o.tap_name.as_str()),
                (Some(1234), "tap1"),
                "{words:?}"
            );
            assert_eq!(o.mtu, 9000, "{words:?}");
            assert!(o.configure, "{words:?}");
        }
    }

    #[test]
    fn long_options_take_attached_or_separate_values() {
        for words in [
            &[
                "--mtu=9000",
                "--exit-fd=4",
                "--ready-fd=5",
                "--cidr=10.0.3.0/24",
                "1",
            ][..],
            &[
                "--mtu",
                "9000",
                "--exit-fd",
                "4",
                "--ready-fd",
                "5",
                "--cidr",
                "10.0.3.0/24",
                "1",
            ],
        ] {
            let o = run(words);
            assert_eq!(o.mtu, 9000, "{words:?}");
            assert_eq!(o.exit_fd, Some(4), "{words:?}");
            assert_eq!(o.ready_fd, Some(5), "{words:?}");
            assert_eq!(o.network.to_string(), "10.0.3.0/24", "{words:?}");
        }
    }

    #[test]
    fn a_value_is_taken_even_when_it_looks_like_an_option() {
        assert_errors_with_usage(&[
            (
                &["--exit-fd", "-1", "1"],
                "exit-fd must be a non-negative integer",
            ),
            (
                &["-m", "--cidr", "1"],
                "MTU must be a positive integer (< 65522)",
            ),
        ]);
    }

    #[test]
    fn short_options_cluster() {
        for words in [
            &["-cr3", "1"][..],
            &["-c", "-r3", "1"],
            &["-c", "-r", "3", "1"],
            &["-cr", "3", "1"],
        ] {
            let o = run(words);
            assert!(o.configure, "{words:?}");
            assert_eq!(o.ready_fd, Some(3), "{words:?}");
        }
        let o = run(&["-ce4", "-m1400", "1"]);
        assert_eq!((o.configure, o.exit_fd, o.mtu), (true, Some(4), 1400));
    }

    #[test]
    fn short_option_equals_sign_is_part_of_the_value_as_in_getopt() {
        assert_errors_with_usage(&[
            (&["-r=3", "1"], "ready-fd must be a non-negative integer"),
            (&["-c=1", "1"], "rslirp: invalid option -- '='"),
        ]);
    }

    #[test]
    fn double_dash_ends_options() {
        let path = existing_path();
        let o = run(&["--netns-type=path", "--", &path, "--mtu"]);
        assert_eq!(o.target, path);
        assert_eq!(o.tap_name, "--mtu");
        assert_eq!(o.mtu, 1500);
        assert_eq!(
            error_with_usage(&["--", "-5"]),
            "PID must be a positive integer"
        );
    }

    #[test]
    fn long_names_may_be_abbreviated_to_a_unique_prefix() {
        let o = run(&[
            "--conf",
            "--mt=9000",
            "--ready",
            "7",
            "--disable-h",
            "--ci=10.9.0.0/16",
            "1",
        ]);
        assert!(o.configure && o.disable_host_loopback);
        assert_eq!((o.mtu, o.ready_fd), (9000, Some(7)));
        assert_eq!(o.network.to_string(), "10.9.0.0/16");
        // `--macaddr` reaches --macaddress.
        assert_eq!(
            error_without_usage(&["-c", "--macaddr=zz", "1"]),
            "\"zz\" is an invalid MAC address."
        );
        assert_eq!(
            run(&["-c", "--macaddr", "52:54:00:12:34:56", "1"]).mac_address,
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        // An exact name wins over the longer names it is a prefix of.
        let o = run(&["--outbound-addr=10.1.1.1", "1"]);
        assert_eq!(
            (o.outbound_addr.as_deref(), o.outbound_addr6),
            (Some("10.1.1.1"), None)
        );
    }

    #[test]
    fn ambiguous_prefixes_are_errors_listing_the_candidates() {
        assert_ambiguous(&[
            (
                &["--e", "1"],
                "'--exit-fd' '--enable-ipv6' '--enable-sandbox' '--enable-seccomp'",
            ),
            (
                &["--enable=x", "1"],
                "'--enable-ipv6' '--enable-sandbox' '--enable-seccomp'",
            ),
            (&["--m", "1400", "1"], "'--mtu' '--macaddress'"),
            (
                &["--outbound", "::1", "1"],
                "'--outbound-addr' '--outbound-addr6'",
            ),
        ]);
    }

    /// What a long name resolves to, comparable: the option matched or the candidates.
    fn resolved(found: LongMatch) -> Result<&'static str, Vec<&'static str>> {
        match found {
            LongMatch::Found(_, long) => Ok(long),
            LongMatch::Unknown => Err(Vec::new()),
            LongMatch::Ambiguous(candidates) => Err(candidates),
        }
    }

    /// Adding options must not change what an abbreviation meant before: every prefix of
    /// every long name that resolved, or was ambiguous, among the older options resolves
    /// the same now, with the same candidates in the error.
    #[test]
    fn later_options_leave_every_older_prefix_alone() {
        let older = |opt: Opt| !LATER_OPTIONS.contains(&opt);
        let mut checked = 0;
        for spec in OPTIONS {
            for name in std::iter::once(spec.long).chain(spec.aliases.iter().copied()) {
                for end in 1..=name.len() {
                    let prefix = &name[..end];
                    let before = resolved(lookup_among(prefix, older));
                    if before != Err(Vec::new()) {
                        assert_eq!(resolved(lookup_long(prefix)), before, "--{prefix}");
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 100, "only {checked} prefixes checked");
        // The ones a caller is most likely to have typed.
        assert_ambiguous(&[
            (
                &["--outbound", "::1", "1"],
                "'--outbound-addr' '--outbound-addr6'",
            ),
            (
                &["--outbound-a=x", "1"],
                "'--outbound-addr' '--outbound-addr6'",
            ),
            (&["--p", "x", "1"], "'--pcap' '--pcap-size'"),
            (&["--pc", "/x", "1"], "'--pcap' '--pcap-size'"),
        ]);
        assert_eq!(
            run(&["--pcap-", "64K", "--pcap=/x", "1"]).pcap_size,
            64 << 10
        );
        assert_eq!(
            run(&["--outbound-addr6", "::1", "1"])
                .outbound_addr6
                .as_deref(),
            Some("::1")
        );
        // The new names themselves, whole or by a prefix no older option has.
        assert_eq!(run(&["--pu", "80:80", "1"]).publish.len(), 1);
        assert_eq!(
            run(&["--outbound-if=eth0", "1"]).outbound_if.as_deref(),
            Some("eth0")
        );
        assert_eq!(
            error_with_usage(&["--outbound-i", "eth0", "1"]),
            "rslirp: option '--outbound-i' is ambiguous; possibilities: '--outbound-if' '--outbound-if6'"
        );
    }

    #[test]
    fn deprecated_aliases_are_accepted() {
        assert!(run(&["--no-host-loopback", "1"]).disable_host_loopback);
        assert!(run(&["--no", "1"]).disable_host_loopback);
        assert!(run(&["--create-sandbox", "1"]).enable_sandbox);
    }

    #[test]
    fn getopt_errors_have_getopt_texts_and_usage() {
        assert_errors_with_usage(&[
            (&["--bogus", "1"], "rslirp: unrecognized option '--bogus'"),
            (
                &["--bogus=x", "1"],
                "rslirp: unrecognized option '--bogus=x'",
            ),
            (&["-x", "1"], "rslirp: invalid option -- 'x'"),
            (&["-cx", "1"], "rslirp: invalid option -- 'x'"),
            (&["1", "-m"], "rslirp: option requires an argument -- 'm'"),
            (
                &["1", "--mt"],
                "rslirp: option '--mtu' requires an argument",
            ),
            (
                &["--configure=1", "1"],
                "rslirp: option '--configure' doesn't allow an argument",
            ),
            (
                &["--help=3"],
                "rslirp: option '--help' doesn't allow an argument",
            ),
        ]);
    }

    #[test]
    fn missing_operand_shows_usage() {
        let err = error(&["-c"]);
        assert!(err.show_usage);
        assert_eq!(err.message, "rslirp: missing PID|PATH|FD operand");
        assert!(error(&[]).show_usage);
    }

    #[test]
    fn too_many_arguments() {
        assert_eq!(
            error_without_usage(&["1", "tap0", "extra"]),
            "too many arguments"
        );
    }

    #[test]
    fn mtu_range() {
        assert_eq!(run(&["-m", "1", "1"]).mtu, 1);
        assert_eq!(run(&["-m", "65521", "1"]).mtu, 65521);
        // strtol accepts leading space and a sign.
        assert_eq!(run(&["-m", " +1400", "1"]).mtu, 1400);
        for bad in [
            "0",
            "65522",
            "-1",
            "abc",
            "1500x",
            "",
            "99999999999999999999",
        ] {
            assert_eq!(
                error_with_usage(&["--mtu", bad, "1"]),
                "MTU must be a positive integer (< 65522)",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn fd_errors() {
        assert_eq!(
            run(&["-e", "0", "-r", "2147483647", "1"]).ready_fd,
            Some(i32::MAX)
        );
        for bad in ["-1", "x", "3x", "", "2147483648"] {
            assert_eq!(
                error_with_usage(&["-e", bad, "1"]),
                "exit-fd must be a non-negative integer",
                "{bad:?}"
            );
            assert_eq!(
                error_with_usage(&["-r", bad, "1"]),
                "ready-fd must be a non-negative integer",
                "{bad:?}"
            );
        }
    }

    #[test]
    fn pid_must_be_positive() {
        for bad in ["0", "abc", "12x", "2147483648"] {
            assert_eq!(
                error_with_usage(&[bad, "tap0"]),
                "PID must be a positive integer",
                "{bad:?}"
            );
        }
        assert_eq!(
            error_with_usage(&["--netns-type=pid", "-c", "--", "-5"]),
            "PID must be a positive integer"
        );
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStringExt;
            let err = match parse(ARGV0, vec![OsString::from_vec(vec![0xff])]) {
                Err(err) => err,
                Ok(other) => panic!("expected an error, got {other:?}"),
            };
            assert_eq!(err.message, "PID must be a positive integer");
        }
    }

    #[test]
    fn netns_type_path() {
        let path = existing_path();
        let o = run(&["--netns-type=path", &path, "tap1"]);
        assert_eq!(o.netns_type, NetnsType::Path);
        assert_eq!((o.target.as_str(), o.pid), (path.as_str(), None));
        assert_eq!(o.tap_name, "tap1");
        assert_eq!(
            error_with_usage(&["--netns-type", "path", MISSING_PATH]),
            "existing path expected when --netns-type=path: No such file or directory"
        );
    }

    #[test]
    fn netns_type_must_be_known() {
        assert_eq!(
            error_with_usage(&["--netns-type=foo", "1"]),
            "--netns-type must be either \"pid\", \"path\" or \"tapfd\""
        );
    }

    #[test]
    fn netns_type_tapfd() {
        let o = run(&["--netns-type=tapfd", "3"]);
        assert_eq!(o.netns_type, NetnsType::TapFd);
        assert_eq!((o.tap_fd, o.pid, o.target.as_str()), (Some(3), None, "3"));
        assert_eq!(o.target_type, TargetType::Netns);
        // TAPNAME is optional: the fd knows its interface.
        assert_eq!(o.tap_name, "");
        assert_eq!(
            run(&["--netns-type", "tapfd", "0", "tap1"]).tap_name,
            "tap1"
        );
        assert_eq!(run(&["--netns-type=tapfd", " 7"]).tap_fd, Some(7));
        // Accepted as by the reference, which then ignores it (no namespace to configure).
        assert!(run(&["--netns-type=tapfd", "-c", "3"]).configure);
        for bad in ["foo", "2x", "", "99999999999"] {
            assert_eq!(
                error_with_usage(&["--netns-type=tapfd", bad]),
                "TAPFD must a file descriptor",
                "{bad:?}"
            );
        }
        assert_errors_with_usage(&[
            (
                &["--netns-type=tapfd", "--", "-1"],
                "TAPFD must a file descriptor",
            ),
            (
                &["--netns-type=tapfd"],
                "rslirp: missing PID|PATH|FD operand",
            ),
        ]);
        assert_errors_without_usage(&[
            (
                &["--netns-type=tapfd", "3", "tap0", "extra"],
                "too many arguments",
            ),
            (
                &["--netns-type=tapfd", "-r", "3", "3"],
                "TAPFD 3 is also the ready-fd or the exit-fd",
            ),
            (
                &["--netns-type=tapfd", "-e4", "4"],
                "TAPFD 4 is also the ready-fd or the exit-fd",
            ),
        ]);
    }

    #[test]
    fn userns_path_must_exist() {
        let path = existing_path();
        let o = run(&["--userns-path", &path, "1"]);
        assert_eq!(o.userns_path, Some(PathBuf::from(&path)));
        assert_eq!(
            error_with_usage(&[&format!("--userns-path={MISSING_PATH}"), "1"]),
            format!("userns path doesn't exist: {MISSING_PATH}")
        );
    }

    #[test]
    fn macaddress_requires_configure() {
        assert_eq!(
            error_with_usage(&["--macaddress", "52:54:00:12:34:56", "1"]),
            "--macaddr cannot be specified when --configure or -c is not specified"
        );
    }

    #[test]
    fn mac_address_syntax() {
        assert_eq!(
            parse_mac(OsStr::new("52:54:0:AB:cd:5")).ok(),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 5])
        );
        for bad in [
            "zz",
            "52:54:00:12:34",
            "52:54:00:12:34:56:77",
            "52-54-00-12-34-56",
            "152:54:00:12:34:56",
            "52:54::12:34:56",
        ] {
            assert_eq!(
                error_without_usage(&["-c", "--macaddress", bad, "1"]),
                format!("\"{bad}\" is an invalid MAC address."),
            );
        }
    }

    #[test]
    fn target_type() {
        assert_eq!(run(&["--target-type=netns", "1"]).target, "1");
        assert_eq!(
            error_with_usage(&["--target-type=foo", "1"]),
            "--target-type must be either \"netns\" or \"bess\""
        );
        let o = run(&["--target-type=netns", "1"]);
        assert_eq!((o.target_type, o.bess_socket), (TargetType::Netns, None));
    }

    #[test]
    fn target_type_bess() {
        let o = run(&[
            "--target-type=bess",
            "/run/bess.sock",
            "-r",
            "3",
            "-a",
            "/tmp/a",
        ]);
        assert_eq!(o.target_type, TargetType::Bess);
        assert_eq!(o.bess_socket, Some(PathBuf::from("/run/bess.sock")));
        assert_eq!(
            (o.target.as_str(), o.pid, o.tap_fd),
            ("/run/bess.sock", None, None)
        );
        assert_eq!(o.tap_name, "");
        assert_eq!(o.ready_fd, Some(3));
        // A bare number is a path here, not a pid.
        assert_eq!(
            run(&["--target-type", "bess", "42"]).bess_socket,
            Some("42".into())
        );
        assert_errors_with_usage(&[
            (&["--target-type=bess"], "rslirp: missing PATH operand"),
            (&["--target-type=bess", "a", "b"], "too many arguments"),
            (
                &["--target-type=bess", "-c", "x"],
                "--configure conflicts with --target-type=bess",
            ),
        ]);
        // Any --netns-type, even the default and even an unknown one, conflicts.
        for netns_type in ["pid", "path", "tapfd", "foo"] {
            assert_eq!(
                error_with_usage(&["--target-type=bess", "--netns-type", netns_type, "x"]),
                "--netns-type conflicts with --target-type=bess"
            );
        }
        let userns = existing_path();
        assert_eq!(
            error_with_usage(&["--target-type=bess", "--userns-path", &userns, "x"]),
            "--userns-path conflicts with --target-type=bess"
        );
        let long = format!("/tmp/{}", "b".repeat(SUN_PATH_MAX - 5));
        assert_eq!(
            error_without_usage(&["--target-type=bess", &long]),
            "the specified BESS socket path is too long (>= 108)"
        );
        let fits = format!("/tmp/{}", "b".repeat(SUN_PATH_MAX - 6));
        assert_eq!(
            run(&["--target-type=bess", &fits]).bess_socket,
            Some(PathBuf::from(fits))
        );
    }

    #[test]
    fn bess_checks_come_in_the_reference_order() {
        // The operand count first, then -c, then --netns-type, then --userns-path.
        assert_errors_with_usage(&[
            (
                &["--target-type=bess", "-c", "--netns-type=pid"],
                "rslirp: missing PATH operand",
            ),
            (
                &["--target-type=bess", "-c", "--netns-type=pid", "x"],
                "--configure conflicts with --target-type=bess",
            ),
        ]);
        let userns = existing_path();
        assert_eq!(
            error_with_usage(&[
                "--target-type=bess",
                "--userns-path",
                &userns,
                "--netns-type=pid",
                "x"
            ]),
            "--netns-type conflicts with --target-type=bess"
        );
        // --macaddress without -c is checked before the target type.
        assert_eq!(
            error_with_usage(&["--target-type=bess", "--macaddress=52:54:00:12:34:56", "x"]),
            "--macaddr cannot be specified when --configure or -c is not specified"
        );
    }

    #[test]
    fn cidr6_sets_the_ipv6_prefix() {
        use rslirp_stack::Ipv6Prefix;
        let prefix = |o: &Options| o.network.ipv6_prefix().to_string();
        assert_eq!(prefix(&run(&["-6", "1"])), "fd00::/64", "the default");
        assert_eq!(run(&["1"]).network.ipv6_prefix(), Ipv6Prefix::DEFAULT);
        for words in [
            &["-6", "--cidr6=fd42:1:2:3::/64", "1"][..],
            &["--cidr6", "fd42:1:2:3::/64", "-6", "1"],
            &["1", "--enable-ipv6", "--cidr6", "fd42:1:2:3:0::/64"],
            &["-6", "--cidr6=fd00::/64", "--cidr6=fd42:1:2:3::/64", "1"],
        ] {
            let o = run(words);
            assert_eq!(prefix(&o), "fd42:1:2:3::/64", "{words:?}");
            let config = o.stack_config();
            assert!(config.enable_ipv6);
            assert_eq!(
                config.network.gateway6(),
                "fd42:1:2:3::2".parse::<Ipv6Addr>().unwrap()
            );
            assert_eq!(
                config.network.dns6(),
                "fd42:1:2:3::3".parse::<Ipv6Addr>().unwrap()
            );
            // The IPv4 side is untouched.
            assert_eq!(config.network.to_string(), VirtualNetwork::DEFAULT);
        }
        // Both sides at once, in either order.
        let o = run(&["-6", "--cidr6=2001:db8::/64", "--cidr=10.9.0.0/16", "1"]);
        assert_eq!(o.network.to_string(), "10.9.0.0/16");
        assert_eq!(prefix(&o), "2001:db8::/64");
        let o = run(&["--cidr=10.9.0.0/16", "-6", "--cidr6=2001:db8::/64", "1"]);
        assert_eq!(o.network.to_string(), "10.9.0.0/16");
        assert_eq!(prefix(&o), "2001:db8::/64");
    }

    #[test]
    fn cidr6_errors_name_the_option_without_usage() {
        assert_eq!(
            error_without_usage(&["--cidr6=fd42::/64", "1"]),
            "--cidr6 needs --enable-ipv6 (-6)"
        );
        let refused = |value: &str| error_without_usage(&["-6", "--cidr6", value, "1"]);
        assert_eq!(
            refused("fd42::"),
            "--cidr6: invalid IPv6 prefix: fd42:: (expected PREFIX/64, like fd00::/64)"
        );
        assert_eq!(
            refused(""),
            "--cidr6: invalid IPv6 prefix:  (expected PREFIX/64, like fd00::/64)"
        );
        assert_eq!(
            refused("10.0.2.0/24"),
            "--cidr6: invalid IPv6 prefix: 10.0.2.0/24 (expected PREFIX/64, like fd00::/64)"
        );
        assert_eq!(
            refused("fd42::/48"),
            "--cidr6: IPv6 prefix length needs to be 64: fd42::/48"
        );
        for kind in [
            "ff00::/64",
            "::/64",
            "::1/64",
            "fe80::/64",
            "::ffff:1.2.3.4/64",
        ] {
            assert_eq!(
                refused(kind),
                format!(
                    "--cidr6: IPv6 prefix needs to be unicast (not multicast, link-local, \
                     loopback, unspecified or IPv4-mapped): {kind}"
                )
            );
        }
        assert_eq!(
            refused("fd42::100/64"),
            "--cidr6: IPv6 prefix needs to be a network address like fd00::/64, not like \
             fd00::100/64: fd42::100/64"
        );
        // The option needs a value, as every option with one does.
        assert_eq!(
            error_with_usage(&["-6", "1", "--cidr6"]),
            "rslirp: option '--cidr6' requires an argument"
        );
        // The late check: an earlier error in the reference's order still wins.
        assert_eq!(
            error_without_usage(&["--cidr=10.0.2.1/24", "--cidr6=x", "1"]),
            "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24"
        );
    }

    /// Adding `--cidr6` must not change what any abbreviation meant before: `--ci` and
    /// `--cid` are still `--cidr`, `--c` still ambiguous between the same options.
    #[test]
    fn cidr6_leaves_the_abbreviations_of_cidr_alone() {
        for name in ["--ci", "--cid", "--cidr"] {
            let o = run(&[&format!("{name}=10.9.0.0/16"), "1"]);
            assert_eq!(o.network.to_string(), "10.9.0.0/16", "{name}");
            assert_eq!(o.network.ipv6_prefix().to_string(), "fd00::/64", "{name}");
            let o = run(&[name, "10.9.0.0/16", "1"]);
            assert_eq!(o.network.to_string(), "10.9.0.0/16", "{name}");
        }
        assert_eq!(
            error_with_usage(&["--c", "1"]),
            "rslirp: option '--c' is ambiguous; possibilities: '--configure' '--cidr' '--create-sandbox'"
        );
        // Only the whole name reaches --cidr6.
        let o = run(&["-6", "--cid=10.9.0.0/16", "--cidr6=fd42::/64", "1"]);
        assert_eq!(
            (o.network.to_string(), o.network.ipv6_prefix().to_string()),
            ("10.9.0.0/16".to_string(), "fd42::/64".to_string())
        );
        assert_errors_with_usage(&[
            (
                &["--cidr6x=fd42::/64", "1"],
                "rslirp: unrecognized option '--cidr6x=fd42::/64'",
            ),
            (
                &["--cidr64=fd42::/64", "1"],
                "rslirp: unrecognized option '--cidr64=fd42::/64'",
            ),
        ]);
    }

    #[test]
    fn cidr_errors_come_from_the_stack_without_usage() {
        assert_errors_without_usage(&[
            (&["--cidr=1.2.3.4", "1"], "invalid CIDR: 1.2.3.4"),
            (
                &["--cidr=10.0.2.300/24", "1"],
                "invalid network address: 10.0.2.300",
            ),
            (
                &["--cidr=10.0.0.0/26", "1"],
                "prefix length needs to be 1-25",
            ),
            (
                &["--cidr=10.0.2.1/24", "1"],
                "CIDR needs to be a network address like 10.0.2.0/24, not like 10.0.2.100/24",
            ),
        ]);
    }

    #[test]
    fn api_socket_path_must_fit_sun_path() {
        let long = format!("/tmp/{}", "a".repeat(SUN_PATH_MAX - 5));
        assert_eq!(long.len(), SUN_PATH_MAX);
        assert_eq!(
            error_without_usage(&["--api-socket", &long, "1"]),
            format!("API socket path must be shorter than 108 bytes (it has 108): {long}")
        );
        let fits = format!("/tmp/{}", "a".repeat(SUN_PATH_MAX - 6));
        assert_eq!(
            run(&["-a", &fits, "1"]).api_socket,
            Some(PathBuf::from(fits))
        );
    }

    #[test]
    fn outbound_addresses_are_validated() {
        assert_errors_without_usage(&[
            (
                &["--outbound-addr=::1", "1"],
                "outbound-addr has to be valid ipv4 address or interface name.",
            ),
            (
                &["--outbound-addr6=10.0.0.1", "1"],
                "outbound-addr6 has to be valid ipv6 address or interface name.",
            ),
            (
                &["--outbound-addr=a/b", "1"],
                "outbound-addr has to be valid ipv4 address or interface name.",
            ),
        ]);
        assert_eq!(
            run(&["--outbound-addr=eth0", "1"]).outbound_addr.as_deref(),
            Some("eth0")
        );
        assert_eq!(
            run(&["--outbound-addr6=fd00::1", "1"])
                .outbound_addr6
                .as_deref(),
            Some("fd00::1")
        );
    }

    fn publish(spec: &str) -> Publish {
        let mut o = run(&["--publish", spec, "1"]);
        assert_eq!(o.publish.len(), 1, "{spec}");
        o.publish.remove(0)
    }

    fn requests(spec: &str) -> Vec<(ForwardProto, Option<IpAddr>, u16, u16)> {
        publish(spec)
            .requests()
            .map(|r| {
                assert_eq!(
                    r.guest_addr, None,
                    "{spec}: the guest address is the default"
                );
                (r.proto, r.host_addr, r.host_port, r.guest_port)
            })
            .collect()
    }

    #[test]
    fn publish_syntax() {
        use ForwardProto::{Tcp, Udp};
        let v4 = |a: [u8; 4]| Some(IpAddr::from(a));
        assert_eq!(requests("8080:80"), [(Tcp, None, 8080, 80)]);
        assert_eq!(requests("tcp/8080:80"), [(Tcp, None, 8080, 80)]);
        assert_eq!(requests("udp/5353:53"), [(Udp, None, 5353, 53)]);
        assert_eq!(
            requests("127.0.0.1:8080:80"),
            [(Tcp, v4([127, 0, 0, 1]), 8080, 80)]
        );
        assert_eq!(
            requests("udp/0.0.0.0:1:65535"),
            [(Udp, v4([0, 0, 0, 0]), 1, 65535)]
        );
        assert_eq!(
            requests("[::1]:8080:80"),
            [(Tcp, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)), 8080, 80)]
        );
        assert_eq!(
            requests("udp/[fd00::5]:53-54:1053-1054"),
            [
                (Udp, Some("fd00::5".parse().unwrap()), 53, 1053),
                (Udp, Some("fd00::5".parse().unwrap()), 54, 1054)
            ]
        );
        assert_eq!(
            requests("tcp/8080-8082:80-82"),
            [
                (Tcp, None, 8080, 80),
                (Tcp, None, 8081, 81),
                (Tcp, None, 8082, 82)
            ]
        );
        // A range may map onto lower or higher ports, up to the last one.
        assert_eq!(
            requests("65534-65535:1-2"),
            [(Tcp, None, 65534, 1), (Tcp, None, 65535, 2)]
        );
        assert_eq!(requests("80-80:8080-8080"), [(Tcp, None, 80, 8080)]);
        // Repeatable, in order; long and attached forms, and a prefix of the name.
        let o = run(&[
            "--publish=udp/53:53",
            "1",
            "--publish",
            "80:80",
            "--pub=81:81",
        ]);
        let ports: Vec<(ForwardProto, u16)> = o
            .publish
            .iter()
            .flat_map(|p| p.requests())
            .map(|r| (r.proto, r.host_port))
            .collect();
        assert_eq!(ports, [(Udp, 53), (Tcp, 80), (Tcp, 81)]);
    }

    /// The reason in the `invalid --publish "SPEC": REASON (expected ...)` error that
    /// `words` draw, checking the rest of the text.
    fn publish_fault(words: &[&str], spec: &str) -> String {
        let message = error_without_usage(words);
        let prefix = format!("invalid --publish \"{spec}\": ");
        let suffix = format!(" (expected {PUBLISH_SYNTAX})");
        assert!(
            message.starts_with(&prefix) && message.ends_with(&suffix),
            "{message}"
        );
        message[prefix.len()..message.len() - suffix.len()].to_string()
    }

    #[test]
    fn publish_errors_name_the_fault() {
        for (spec, reason) in [
            (
                "8080-8082:80-81",
                "3 host ports (8080-8082) but 2 guest ports (80-81)",
            ),
            (
                "8080-8081:80",
                "2 host ports (8080-8081) but 1 guest ports (80)",
            ),
            ("0:80", "port 0 cannot be published"),
            ("8080:0", "port 0 cannot be published"),
            ("65536:80", "port 65536 is beyond 65535"),
            ("8080:99999999999", "port 99999999999 is beyond 65535"),
            (
                "8082-8080:80-82",
                "port range 8082-8080 ends before it starts",
            ),
            ("sctp/80:80", "unknown protocol \"sctp\" (tcp or udp)"),
            ("TCP/80:80", "unknown protocol \"TCP\" (tcp or udp)"),
            ("8080:80/udp", "the protocol comes first, as in udp/8080:80"),
            ("8080", "no guest port"),
            ("", "no guest port"),
            ("8080:", "\"\" is not a port number"),
            (":80", "\"\" is not a port number"),
            ("+80:80", "\"+80\" is not a port number"),
            ("80-:80", "\"\" is not a port number"),
            (
                "localhost:80:80",
                "\"localhost\" is not an IPv4 address (IPv6 goes in brackets)",
            ),
            (
                "::1:8080:80",
                "an IPv6 host address goes in brackets, as [::1]:8080:80",
            ),
            (
                "[::1:8080:80",
                "an IPv6 host address needs its closing bracket and a colon after it",
            ),
            ("[1.2.3.4]:80:80", "\"1.2.3.4\" is not an IPv6 address"),
            ("[::1]:80", "no guest port after the host address"),
        ] {
            assert_eq!(publish_fault(&["--publish", spec, "1"], spec), reason);
        }
        // A bad --publish does not hide an earlier getopt error, nor a later one its own.
        assert_eq!(
            error_with_usage(&["--mtu", "0", "--publish", "0:0", "1"]),
            "MTU must be a positive integer (< 65522)"
        );
        assert!(
            error_without_usage(&["--publish", "0:0", "--mtu", "0", "1"])
                .starts_with("invalid --publish")
        );
        // The option takes the next word as its value, as every option with one does.
        assert_eq!(publish_fault(&["--publish", "1"], "1"), "no guest port");
    }

    #[test]
    fn outbound_interfaces() {
        let o = run(&["--outbound-if", "wg0", "--outbound-if6=vpn-6", "1"]);
        assert_eq!(o.outbound_if.as_deref(), Some("wg0"));
        assert_eq!(o.outbound_if6.as_deref(), Some("vpn-6"));
        // Independent of the outbound addresses, and combinable with them.
        let o = run(&["--outbound-addr=10.1.1.1", "--outbound-if=wg0", "1"]);
        assert_eq!(o.outbound_addr.as_deref(), Some("10.1.1.1"));
        assert_eq!(o.outbound_if.as_deref(), Some("wg0"));
        for bad in ["", "a/b", "a:b", "a b", ".", "..", "sixteen-chars-xx"] {
            for option in ["--outbound-if", "--outbound-if6"] {
                assert_eq!(
                    error_without_usage(&[option, bad, "1"]),
                    format!("{option} has to be a valid interface name: \"{bad}\"")
                );
            }
        }
        assert_eq!(
            run(&["--outbound-if", "fifteen-chars-x", "1"])
                .outbound_if
                .as_deref(),
            Some("fifteen-chars-x")
        );
    }

    #[test]
    fn sandbox_and_seccomp_are_accepted() {
        let o = run(&["--enable-sandbox", "--enable-seccomp", "1"]);
        assert!(o.enable_sandbox && o.enable_seccomp);
        assert!(run(&["--enable-seccomp", "1"]).enable_seccomp);
        // Every option of the table works now; only some values are still refused.
        assert!(OPTIONS.iter().all(|spec| spec.supported));
    }

    #[test]
    fn pcap_file_and_size() {
        let o = run(&["1"]);
        assert_eq!((o.pcap, o.pcap_size), (None, 100 * 1024 * 1024));
        let o = run(&["--pcap", "/tmp/x.pcap", "1"]);
        assert_eq!(o.pcap, Some(PathBuf::from("/tmp/x.pcap")));
        assert_eq!(o.pcap_size, crate::pcap::DEFAULT_SIZE_LIMIT);
        for (size, bytes) in [
            ("24", 24),
            ("65536", 65536),
            ("64k", 64 << 10),
            ("64K", 64 << 10),
            ("100M", 100 << 20),
            ("2g", 2 << 30),
        ] {
            let o = run(&["--pcap=/tmp/x.pcap", "--pcap-size", size, "1"]);
            assert_eq!(o.pcap_size, bytes, "{size}");
        }
        // getopt prefixes: `--pcap` is exact, a longer prefix picks --pcap-size.
        assert_eq!(
            run(&["--pcap-s=1k", "--pcap=f", "1"]).pcap_size,
            1024,
            "prefix of --pcap-size"
        );
        assert_eq!(
            error_with_usage(&["--pc=f", "1"]),
            "rslirp: option '--pc=f' is ambiguous; possibilities: '--pcap' '--pcap-size'"
        );
        for bad in [
            "",
            "0",
            "23",
            "k",
            "1.5M",
            "-1",
            "10KB",
            " 10",
            "99999999999G",
        ] {
            assert_eq!(
                error_without_usage(&["--pcap=f", "--pcap-size", bad, "1"]),
                format!(
                    "--pcap-size must be a number of bytes of at least 24, optionally \
                     followed by K, M or G: {bad}"
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            error_without_usage(&["--pcap-size=1M", "1"]),
            "--pcap-size needs --pcap FILE"
        );
    }

    #[test]
    fn errors_come_in_the_reference_order() {
        assert_errors_with_usage(&[
            (
                &[&format!("--userns-path={MISSING_PATH}"), "-m", "0", "1"],
                &format!("userns path doesn't exist: {MISSING_PATH}"),
            ),
            (
                &["-m", "0", &format!("--userns-path={MISSING_PATH}"), "1"],
                "MTU must be a positive integer (< 65522)",
            ),
            (
                &["--target-type=x", "--macaddress=1", "0"],
                "--macaddr cannot be specified when --configure or -c is not specified",
            ),
            (
                &["--target-type=x"],
                "--target-type must be either \"netns\" or \"bess\"",
            ),
            (&["--cidr=bad", "0"], "PID must be a positive integer"),
        ]);
    }

    #[test]
    fn help_wins_over_later_errors_only() {
        assert_eq!(help_text(&["-h", "--mtu", "0"]), usage(ARGV0));
        assert_eq!(help_text(&["1", "--he"]), usage(ARGV0));
        assert_eq!(
            error_with_usage(&["--mtu", "0", "-h"]),
            "MTU must be a positive integer (< 65522)"
        );
    }

    #[test]
    fn help_lists_exactly_the_working_options() {
        let text = help_text(&["--help"]);
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("Usage: rslirp [OPTION]... PID|PATH|FD [TAPNAME]")
        );
        assert!(text.contains(
            "--netns-type=TYPE        specify network namespace type ([path|pid|tapfd], \
             default=pid)\n"
        ));
        assert!(text.contains(
            "--target-type=TYPE       specify the target type ([netns|bess], default=netns)\n"
        ));
        assert!(text.contains("-m, --mtu=MTU            specify MTU (default=1500, max=65521)\n"));
        assert!(text.contains(&format!("(default={})", VirtualNetwork::DEFAULT)));
        assert!(text.contains(
            "--cidr6=PREFIX           specify IPv6 prefix, a /64, with -6 (default=fd00::/64)\n"
        ));
        let option_lines: Vec<&str> = text.lines().filter(|l| l.starts_with('-')).collect();
        let expected = [
            "-c, --configure ",
            "-e, --exit-fd=FD ",
            "-r, --ready-fd=FD ",
            "-m, --mtu=MTU ",
            "-6, --enable-ipv6 ",
            "-a, --api-socket=PATH ",
            "--cidr=CIDR ",
            "--cidr6=PREFIX ",
            "--disable-host-loopback ",
            "--netns-type=TYPE ",
            "--userns-path=PATH ",
            "--enable-sandbox ",
            "--enable-seccomp ",
            "--outbound-addr=IPv4 ",
            "--outbound-addr6=IPv6 ",
            "--disable-dns ",
            "--macaddress=MAC ",
            "--target-type=TYPE ",
            "--pcap=FILE ",
            "--pcap-size=BYTES ",
            "--publish=SPEC ",
            "--outbound-if=IFNAME ",
            "--outbound-if6=IFNAME ",
            "-h, --help ",
            "-v, --version ",
        ];
        assert_eq!(option_lines.len(), expected.len(), "{text}");
        for (line, start) in option_lines.iter().zip(expected) {
            assert!(
                line.starts_with(start),
                "{line:?} should start with {start:?}"
            );
            // Descriptions start in the reference's column.
            assert_eq!(line.as_bytes().get(23..25), Some(&b"  "[..]), "{line:?}");
            assert_ne!(line.as_bytes().get(25), Some(&b' '), "{line:?}");
        }
        for unsupported in ["--no-host-loopback", "--create-sandbox"] {
            assert!(!text.contains(unsupported), "--help mentions {unsupported}");
        }
    }

    #[test]
    fn help_points_to_the_control_tool_and_the_manual() {
        let text = help_text(&["--help"]);
        assert!(text.ends_with(
            "\n\nControl a running instance (port forwards, counters, flows) with rslirpctl.\n\
             Manual: rslirp(1), docs/rslirp.1.md in the source tree.\n"
        ));
    }

    #[test]
    fn help_follows_the_supported_flags() {
        for spec in OPTIONS {
            let line = spec.help_line();
            assert_eq!(
                usage(ARGV0).lines().any(|l| l == line),
                spec.listed_in_help(),
                "{line}"
            );
            if !spec.supported {
                assert!(!spec.listed_in_help(), "{}", spec.long);
            }
        }
    }

    #[test]
    fn option_table_is_consistent() {
        let mut longs: Vec<&str> = OPTIONS
            .iter()
            .flat_map(|s| std::iter::once(s.long).chain(s.aliases.iter().copied()))
            .collect();
        let count = longs.len();
        longs.sort_unstable();
        longs.dedup();
        assert_eq!(longs.len(), count, "duplicate long name");
        let mut shorts: Vec<char> = OPTIONS.iter().filter_map(|s| s.short).collect();
        let count = shorts.len();
        shorts.sort_unstable();
        shorts.dedup();
        assert_eq!(shorts.len(), count, "duplicate short name");
        assert_eq!(shorts, ['6', 'a', 'c', 'e', 'h', 'm', 'r', 'v']);
        for (i, spec) in OPTIONS.iter().enumerate() {
            assert!(
                OPTIONS[..i].iter().all(|other| other.opt != spec.opt),
                "{} listed twice",
                spec.long
            );
            assert_eq!(
                spec.help.contains("{values}"),
                !spec.values.is_empty(),
                "{}",
                spec.long
            );
        }
    }

    fn version(words: &[&str]) -> String {
        match parse(ARGV0, args(words)) {
            Ok(Command::Version(text)) => text,
            other => panic!("{words:?}: expected Version, got {other:?}"),
        }
    }

    #[test]
    fn version_has_the_reference_shape() {
        let text = version(&["-v"]);
        assert_eq!(text, version(&["1", "--version", "--mtu", "0"]));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(text.ends_with('\n'));
        let ours = env!("CARGO_PKG_VERSION");
        assert_eq!(lines[0], format!("slirp4netns version 1.2.0+rslirp.{ours}"));
        let commit = lines[1].strip_prefix("commit: ").unwrap_or_default();
        assert!(!commit.is_empty(), "{}", lines[1]);
        assert_eq!(lines[2], format!("libslirp: rslirp {ours}"));
        assert_eq!(lines[3], "SLIRP_CONFIG_VERSION_MAX: 4");
        assert_eq!(lines[4], "libseccomp: seccompiler 0.5.0");
    }

    #[test]
    fn config_version_follows_supported_options() {
        use Opt::*;
        let with = |enabled: &'static [Opt]| {
            slirp_config_version_max(move |opt: Opt| enabled.contains(&opt))
        };
        assert_eq!(with(&[]), 1);
        assert_eq!(with(&[OutboundAddr]), 1);
        assert_eq!(with(&[DisableDns, EnableIpv6]), 1);
        assert_eq!(with(&[OutboundAddr, OutboundAddr6]), 2);
        assert_eq!(with(&[OutboundAddr, OutboundAddr6, EnableIpv6]), 2);
        assert_eq!(with(&[OutboundAddr, OutboundAddr6, DisableDns]), 3);
        assert_eq!(
            with(&[OutboundAddr, OutboundAddr6, DisableDns, EnableIpv6]),
            4
        );
        assert_eq!(slirp_config_version_max(is_supported), 4);
    }

    #[test]
    fn stack_config_carries_the_network_options() {
        let o = run(&[
            "--cidr=10.8.0.0/16",
            "-m",
            "9000",
            "--disable-host-loopback",
            "1",
        ]);
        let config = o.stack_config();
        assert_eq!(config.network.to_string(), "10.8.0.0/16");
        assert_eq!(config.mtu, 9000);
        assert!(config.disable_host_loopback);
        assert!(!config.enable_ipv6 && !config.disable_dns);
        let defaults = rslirp_stack::Config::default();
        assert_eq!(config.limits, defaults.limits);
        assert_eq!(config.timeouts, defaults.timeouts);
    }
}
