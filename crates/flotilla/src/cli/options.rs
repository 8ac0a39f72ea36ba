//! The command line's options: clap's definitions of every command and
//! its flags. Spec flags shared by `service create` and `update` are in
//! [`super::flags`], the stack commands' in [`super::stack`].

use super::{flags, StackCommand};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Flotilla: a cluster orchestrator for services.
#[derive(Debug, Parser)]
#[command(name = "flotilla", version, about, propagate_version = true)]
pub struct Cli {
    /// The node's data directory [default: /var/lib/flotilla for root, else $XDG_DATA_HOME/flotilla]
    #[arg(long, global = true, env = "FLOTILLA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Talk to these managers' client API (HOST:PORT,...) instead of the local daemon; the first that answers is used
    #[arg(long, global = true, env = "FLOTILLA_HOST", value_delimiter = ',')]
    pub host: Vec<String>,

    /// Directory with ca.crt, client.crt and client.key for --host (from 'flotilla client-cert')
    #[arg(long, global = true, env = "FLOTILLA_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// Output format of listing and inspecting commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// How the daemon writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A shell `flotilla completion` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args, Clone, Copy)]
pub struct FormatArg {
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node in the foreground
    Daemon(DaemonArgs),
    /// The version of this binary and the commit it was built from
    Version,
    /// Print a shell completion script: flotilla completion bash > /etc/bash_completion.d/flotilla
    Completion {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Write man pages for every command into a directory
    Man {
        /// Where to write flotilla.1, flotilla-service.1, ...
        dir: PathBuf,
    },
    /// Start a one-node cluster in the foreground on a fresh data dir and deploy a stack file into it
    Dev(DevArgs),
    /// Make the local node the first manager of a new cluster
    Init(InitArgs),
    /// Show the cluster, this node and what runs
    Info(FormatArg),
    /// Join a cluster through one of its managers
    Join(JoinArgs),
    /// Show (or rotate) the token that lets a node join as a worker or a manager
    JoinToken(JoinTokenArgs),
    /// Unlock a manager that restarted under autolock (the key is read from stdin)
    Unlock,
    /// Show (or rotate) the key that unlocks managers (autolock)
    UnlockKey {
        /// Print only the key
        #[arg(short, long)]
        quiet: bool,
        /// Replace the key; the previous one still unlocks a manager that was down
        #[arg(long)]
        rotate: bool,
    },
    /// Change settings of the whole cluster
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Write a backup of the whole cluster state (on any manager, while it runs), or set the leader's backup schedule
    Backup {
        /// The file to write (mode 0600)
        #[arg(
            short,
            long,
            required_unless_present = "schedule",
            conflicts_with = "schedule"
        )]
        output: Option<PathBuf>,
        /// Encrypt it with the passphrase on the first line of this file
        #[arg(long, conflicts_with = "schedule")]
        passphrase_file: Option<PathBuf>,
        /// Instead: the leader writes one this often (6h; 'off' stops it)
        #[arg(long)]
        schedule: Option<String>,
        /// With --schedule: how many to keep
        #[arg(long, default_value_t = 5, requires = "schedule")]
        keep: u32,
        /// With --schedule: the directory on the leader's machine
        #[arg(long, requires = "schedule")]
        dir: Option<String>,
    },
    /// Start a one-manager cluster on this fresh node from a backup
    Restore {
        /// The backup file
        file: PathBuf,
        /// The passphrase of an encrypted backup (first line of this file)
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// The unlock key of a backup made under autolock (first line of this file)
        #[arg(long)]
        unlock_key_file: Option<PathBuf>,
        /// Address other nodes reach this one at, HOST or HOST:PORT
        #[arg(long)]
        advertise_addr: Option<String>,
    },
    /// Leave the cluster: stop this node's tasks and forget the cluster
    Leave {
        /// Leave even as the last manager, or when it breaks quorum
        #[arg(short, long)]
        force: bool,
    },
    /// Make a client certificate for using the CLI from another machine (--host)
    ClientCert {
        /// Who it is for
        #[arg(long, default_value = "admin")]
        name: String,
        /// Where to write ca.crt, client.crt and client.key
        #[arg(long)]
        out: PathBuf,
    },
    /// Print an address that logs a browser in to the dashboard (/ui) without a client certificate
    UiToken {
        /// How long the login lasts (12h by default, at most 7d)
        #[arg(long)]
        ttl: Option<String>,
        /// Print the token alone
        #[arg(short, long)]
        quiet: bool,
    },
    /// Say whether the manager answering is the leader (exit 0) or not (exit 1)
    LeaderCheck,
    /// Manage nodes
    #[command(subcommand)]
    Node(NodeCommand),
    /// Manage services
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Deploy stack files
    #[command(subcommand)]
    Stack(StackCommand),
    /// Manage networks: services on one network reach each other by name
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Manage secrets: data each task of a service gets as a file under /run/secrets, never shown back
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Manage configs: data each task of a service gets as a file at a path of its own
    #[command(subcommand)]
    Config(SecretCommand),
    /// What a task's resolver answers for a name: web, STACK_web, an alias, tasks.web
    Resolve {
        name: String,
        /// The task that asks: its ID or SERVICE.SLOT [default: every network]
        #[arg(long)]
        from: Option<String>,
        /// Record type: A or SRV
        #[arg(long = "type", default_value = "A")]
        rtype: String,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Where the tasks of services answer: address, task, node, health status, labels
    List {
        /// Only this service
        service: Option<String>,
        /// Only services with this label, KEY=VALUE (repeatable)
        #[arg(long = "label")]
        label: Vec<String>,
        #[command(flatten)]
        format: FormatArg,
    },
    /// The routing mesh: published ports on every node
    #[command(subcommand)]
    Mesh(MeshCommand),
    /// Small workloads for trying Flotilla out, run as tasks
    #[command(subcommand)]
    Demo(DemoCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Change settings of the cluster
    Update {
        /// Seal the cluster's keys under an unlock key that restarted managers need
        #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
        autolock: Option<bool>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NetworkCommand {
    /// Create an overlay network
    Create {
        name: String,
        /// Only overlay networks exist; accepted for Docker's command lines
        #[arg(short, long, default_value = "overlay")]
        driver: String,
        /// Subnet in CIDR form [default: a /19 of 10.64.0.0/10]
        #[arg(long)]
        subnet: Option<String>,
        /// No route out of the network
        #[arg(long)]
        internal: bool,
        /// Accepted for Compose and Docker; any service may attach
        #[arg(long)]
        attachable: bool,
        /// Driver option: encrypted (traffic between nodes encrypted)
        #[arg(short, long = "opt", value_name = "KEY[=VALUE]")]
        opt: Vec<String>,
        /// Network label, KEY=VALUE
        #[arg(short, long = "label")]
        label: Vec<String>,
    },
    /// List networks
    #[command(alias = "list")]
    Ls(FormatArg),
    /// Show networks in detail: subnet, services, attached tasks and their addresses
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
        /// Output format [default: json]
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Remove networks (refused while a service uses one)
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// The commands of `secret` and of `config` (the same for both).
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Create one from a file, or from stdin with -; prints its ID
    Create {
        /// Its name: letters, digits, '-', '_' and '.'
        name: String,
        /// The file with the data (at most 500 KB), or - to read stdin
        #[arg(value_name = "FILE|-", allow_hyphen_values = true)]
        file: String,
        /// Label, KEY=VALUE (repeatable)
        #[arg(short, long = "label")]
        label: Vec<String>,
        /// golang: the data is a template expanded for each task
        /// ({{.Service.Name}}, {{ env "VAR" }}, {{ secret "TARGET" }})
        #[arg(long)]
        template_driver: Option<String>,
    },
    /// Give one new data, a new version: the services that use it roll onto it with their update config
    Update {
        /// Its name or ID
        name: String,
        /// The file with the new data (at most 500 KB), or - to read stdin
        #[arg(value_name = "FILE|-", allow_hyphen_values = true)]
        file: String,
        /// Do not follow the services' rolling updates
        #[arg(short, long)]
        detach: bool,
    },
    /// List them: ID, name, version, size and the services that use each
    #[command(alias = "list")]
    Ls {
        /// Print only the IDs
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Show them in detail (never their data)
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
        /// Output format [default: json]
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Remove them (refused while a service uses one)
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// Connections, bytes, errors and retries per published port and backend, on every node
    Stats {
        /// Only this service
        service: Option<String>,
        /// Only this node (ID or name)
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        format: FormatArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// An HTTP server that answers with its task's slot, ID and node, and the client's address (PROXY protocol understood)
    Http {
        /// Port to listen on [default: $PORT, set by the agent]
        #[arg(long)]
        port: Option<u16>,
        /// Wait this long before each answer, e.g. 100ms
        #[arg(long, default_value = "0s")]
        delay: String,
    },
    /// A UDP server that answers each datagram with its task's slot, ID and node, then the datagram
    Udp {
        /// Port to listen on [default: $PORT, set by the agent]
        #[arg(long)]
        port: Option<u16>,
    },
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Node name [default: the host name]
    #[arg(long)]
    pub name: Option<String>,
    /// Log as JSON lines instead of text (the same as --log-format json)
    #[arg(long)]
    pub log_json: bool,
    /// Also serve /metrics without TLS on this address (e.g. 127.0.0.1:9280); it is always on the local socket and, with a client certificate, on the client API port
    #[arg(long, env = "FLOTILLA_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// On SIGTERM, leave the tasks running for the next start to adopt (upgrades, restarts under systemd) instead of stopping them
    #[arg(long)]
    pub keep_tasks_on_stop: bool,
    /// How the daemon logs: text or json (one JSON object per line)
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Cluster port: node-to-node traffic (raft, agent sessions, joins), mutual TLS
    #[arg(long, default_value = "0.0.0.0:4280", env = "FLOTILLA_LISTEN")]
    pub listen: String,
    /// Address other nodes reach this one at, HOST or HOST:PORT [default: the listen address, or 127.0.0.1]
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Raft heartbeat between managers; also how long one AppendEntries may take
    #[arg(long, default_value = "150ms")]
    pub heartbeat_interval: String,
    /// Raft election timeout (the lowest; the highest is 1.5 times it), also the leader's lease. A dead leader is replaced after about 2.5 to 3 times this
    #[arg(long, default_value = "600ms")]
    pub election_timeout: String,
    /// A node without a heartbeat this long is marked down and its tasks run elsewhere
    #[arg(long, default_value = "3s")]
    pub node_timeout: String,
    /// Raft log entries between snapshots of the store (a tenth of them stays in the log after a snapshot, for members that lag a little)
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub snapshot_every: u64,
    /// Client API port for remote CLIs and load balancers (HTTPS; 'none' to serve only the local socket)
    #[arg(long, default_value = "0.0.0.0:4281", env = "FLOTILLA_API_LISTEN")]
    pub api_listen: String,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Stack file (Compose format) to deploy [default: none]
    pub stack_file: Option<PathBuf>,
    /// Stack name; services are named STACK_SERVICE
    #[arg(long, default_value = "dev")]
    pub stack: String,
    /// Keep the data dir when the dev node stops (default: remove it if it was made for this run)
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Address other nodes reach this one at
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// After quorum loss, on a surviving manager: make it the only manager,
    /// keeping all services, tasks, nodes and certificates
    #[arg(long)]
    pub force_new_cluster: bool,
    /// Seal the cluster's keys under an unlock key (printed once) that a restarted manager needs
    #[arg(long, conflicts_with = "force_new_cluster")]
    pub autolock: bool,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// The join token (from 'flotilla join-token worker|manager' on a manager)
    #[arg(long)]
    pub token: String,
    /// Address other nodes reach this one at
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Cluster address of a manager, HOST:PORT
    pub manager_addr: String,
}

#[derive(Debug, Args)]
pub struct JoinTokenArgs {
    /// worker or manager
    pub role: String,
    /// Print only the token
    #[arg(short, long)]
    pub quiet: bool,
    /// Replace the token's secret; the old token stops working
    #[arg(long)]
    pub rotate: bool,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes
    #[command(alias = "list")]
    Ls(FormatArg),
    /// Make workers managers (raft voters)
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Show nodes in detail
    Inspect {
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Output format [default: json]
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Change a node's availability, labels or name
    Update {
        /// active, pause or drain
        #[arg(long, value_parser = str::parse::<flotilla_types::Availability>)]
        availability: Option<flotilla_types::Availability>,
        /// Add or change a label, KEY=VALUE
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a label
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        /// Rename the node
        #[arg(long = "name")]
        name: Option<String>,
        node: String,
    },
    /// Remove nodes that are down (or up, with --force)
    #[command(alias = "remove")]
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service
    Create(Box<CreateArgs>),
    /// List services
    #[command(alias = "list")]
    Ls(FormatArg),
    /// List the tasks of a service
    Ps {
        name: String,
        #[command(flatten)]
        format: FormatArg,
    },
    /// Show a service in detail
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
        /// Output format [default: json]
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Scale replicated services: NAME=REPLICAS...
    Scale {
        #[arg(required = true, value_name = "NAME=REPLICAS")]
        pairs: Vec<String>,
    },
    /// Change a service; its tasks are replaced, batch by batch, when what they run changes
    Update(Box<UpdateArgs>),
    /// Go back to the spec before the last change of what the tasks run
    Rollback {
        name: String,
        /// Return once the rollback is accepted, without following it
        #[arg(short, long)]
        detach: bool,
    },
    /// Remove services
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show the output of a service's tasks
    Logs {
        name: String,
        /// Keep printing new output, also of tasks that start meanwhile
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of each task
        #[arg(short = 'n', long)]
        tail: Option<u64>,
        /// Only lines since a time: a duration back (10m, 1h30m), a Unix
        /// timestamp or an RFC 3339 time
        #[arg(long)]
        since: Option<String>,
        /// Start each line with the time it was written (within a second)
        #[arg(short, long)]
        timestamps: bool,
        /// No `service.slot.task@node | ` prefix
        #[arg(long)]
        raw: bool,
        /// Leave the task IDs out of the prefix
        #[arg(long)]
        no_task_ids: bool,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Service name
    #[arg(long, allow_hyphen_values = true)]
    pub name: String,
    /// Number of tasks (replicated mode)
    #[arg(long, allow_hyphen_values = true)]
    pub replicas: Option<String>,
    /// replicated, global, replicated-job or global-job
    #[arg(long, default_value = "replicated")]
    pub mode: String,
    /// A replicated job's tasks that run at once (default: all of them)
    #[arg(long, allow_hyphen_values = true)]
    pub max_concurrent: Option<String>,
    /// Environment variable for the tasks, KEY=VALUE
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Service label, KEY=VALUE
    #[arg(short, long = "label")]
    pub label: Vec<String>,
    /// Placement constraint, e.g. node.labels.zone==a
    #[arg(long = "constraint")]
    pub constraint: Vec<String>,
    /// Placement preference: spread=node.labels.KEY spreads the tasks
    /// evenly over the values of the label (several: a hierarchy)
    #[arg(long = "placement-pref", value_name = "spread=DESCRIPTOR")]
    pub placement_pref: Vec<String>,
    /// Restart when: none, on-failure or any (default: any; on-failure
    /// for a job)
    #[arg(long)]
    pub restart_condition: Option<String>,
    /// Restarts allowed (0: no limit)
    #[arg(long, default_value = "0", allow_hyphen_values = true)]
    pub restart_max_attempts: String,
    /// Wait between restarts, e.g. 5s
    #[arg(long, default_value = "5s")]
    pub restart_delay: String,
    /// Window the restart attempts are counted in (0: unbounded)
    #[arg(long, default_value = "0")]
    pub restart_window: String,
    /// Time between SIGTERM and SIGKILL when stopping a task
    #[arg(long, default_value = "10s")]
    pub stop_grace_period: String,
    /// Return once the service is created, without waiting for its tasks
    #[arg(short, long)]
    pub detach: bool,
    /// Mount into each container: type=bind|volume|tmpfs,source=..,target=..[,readonly]
    #[arg(long = "mount")]
    pub mount: Vec<String>,
    /// Publish a port on every node: PUBLISHED:TARGET[/tcp], TARGET (a free
    /// published port is chosen) or published=P,target=T[,protocol=..,mode=..]
    #[arg(short = 'p', long = "publish")]
    pub publish: Vec<String>,
    /// Attach to a network: NAME, or name=NAME[,alias=ALIAS...]
    #[arg(long = "network")]
    pub network: Vec<String>,
    /// Give the tasks a secret as a file: NAME (at /run/secrets/NAME) or
    /// source=NAME[,target=T][,uid=U][,gid=G][,mode=0440]
    #[arg(long = "secret", value_name = "SPEC")]
    pub secret: Vec<String>,
    /// Give the tasks a config as a file: NAME (at /NAME) or
    /// source=NAME[,target=/PATH][,uid=U][,gid=G][,mode=0440]
    #[arg(long = "config", value_name = "SPEC")]
    pub config: Vec<String>,
    #[command(flatten)]
    pub spec: flags::SpecFlags,
    #[command(flatten)]
    pub run: super::container::RunFlags,
    /// Command and arguments (for a docker service: the container's arguments)
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Add or change an environment variable, KEY=VALUE
    #[arg(long = "env-add")]
    pub env_add: Vec<String>,
    /// Remove an environment variable
    #[arg(long = "env-rm")]
    pub env_rm: Vec<String>,
    /// Add or change a service label, KEY=VALUE
    #[arg(long = "label-add")]
    pub label_add: Vec<String>,
    /// Remove a service label
    #[arg(long = "label-rm")]
    pub label_rm: Vec<String>,
    /// Add a placement constraint
    #[arg(long = "constraint-add")]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint
    #[arg(long = "constraint-rm")]
    pub constraint_rm: Vec<String>,
    /// Add a placement preference (after the others): spread=DESCRIPTOR
    #[arg(long = "placement-pref-add", value_name = "spread=DESCRIPTOR")]
    pub placement_pref_add: Vec<String>,
    /// Remove a placement preference: spread=DESCRIPTOR
    #[arg(long = "placement-pref-rm", value_name = "spread=DESCRIPTOR")]
    pub placement_pref_rm: Vec<String>,
    /// Add or replace a mount (same target): type=..,source=..,target=..[,readonly]
    #[arg(long = "mount-add")]
    pub mount_add: Vec<String>,
    /// Remove the mount at this target path
    #[arg(long = "mount-rm")]
    pub mount_rm: Vec<String>,
    /// Publish another port (as --publish of service create)
    #[arg(long = "publish-add")]
    pub publish_add: Vec<String>,
    /// Stop publishing a port: its published port (PUBLISHED[/PROTO]), or
    /// PUBLISHED:TARGET
    #[arg(long = "publish-rm")]
    pub publish_rm: Vec<String>,
    /// Attach to another network (as --network of service create)
    #[arg(long = "network-add")]
    pub network_add: Vec<String>,
    /// Detach from a network, by name or ID
    #[arg(long = "network-rm")]
    pub network_rm: Vec<String>,
    /// Add a secret (as --secret of service create); one at the same target is replaced
    #[arg(long = "secret-add", value_name = "SPEC")]
    pub secret_add: Vec<String>,
    /// Remove a secret, by name, ID or target
    #[arg(long = "secret-rm", value_name = "NAME")]
    pub secret_rm: Vec<String>,
    /// Add a config (as --config of service create); one at the same target is replaced
    #[arg(long = "config-add", value_name = "SPEC")]
    pub config_add: Vec<String>,
    /// Remove a config, by name, ID or target
    #[arg(long = "config-rm", value_name = "NAME")]
    pub config_rm: Vec<String>,
    /// Number of tasks
    #[arg(long, allow_hyphen_values = true)]
    pub replicas: Option<String>,
    /// Restart when: none, on-failure or any
    #[arg(long)]
    pub restart_condition: Option<String>,
    /// Restarts allowed (0: no limit)
    #[arg(long, allow_hyphen_values = true)]
    pub restart_max_attempts: Option<String>,
    /// Wait between restarts
    #[arg(long)]
    pub restart_delay: Option<String>,
    /// Window the restart attempts are counted in (0: unbounded)
    #[arg(long)]
    pub restart_window: Option<String>,
    /// Time between SIGTERM and SIGKILL when stopping a task
    #[arg(long)]
    pub stop_grace_period: Option<String>,
    /// Replace every task even if nothing changed
    #[arg(long)]
    pub force: bool,
    /// Return once the update is accepted, without following it
    #[arg(short, long)]
    pub detach: bool,
    /// Give up following the update after this long
    #[arg(long, default_value = "10m")]
    pub timeout: String,
    #[command(flatten)]
    pub spec: flags::SpecFlags,
    #[command(flatten)]
    pub run: super::container::UpdateRunFlags,
    pub name: String,
    /// A new command and arguments
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}
