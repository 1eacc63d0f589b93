//! tgt-admin's actions, rule for rule: the same decisions, the same
//! tgtadm lines (printed by `-p`/`-v` exactly as tgt-admin prints them,
//! sent as requests otherwise), in the same order. Where tgt-admin walks a
//! Perl hash in its random order (existing targets, sessions, per-LUN
//! options), this walks it sorted (targets by tid), which yields the same
//! final configuration.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::PathBuf;

use super::conf::{self, Block, Value};
use super::tgtadm;
use super::validate;

/// tgt-admin's command-line switches.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `-e`.
    pub execute: bool,
    /// `--delete VALUE`.
    pub delete: Option<String>,
    /// `--offline VALUE`.
    pub offline: Option<String>,
    /// `--ready VALUE`.
    pub ready: Option<String>,
    /// `--update VALUE`.
    pub update: Option<String>,
    /// `-s`.
    pub show: bool,
    /// `-c FILE` (default `/etc/tgt/targets.conf`).
    pub conf: Option<PathBuf>,
    /// `--ignore-errors`.
    pub ignore_errors: bool,
    /// `-f`.
    pub force: bool,
    /// `-p`.
    pub pretend: bool,
    /// `--dump`.
    pub dump: bool,
    /// `-v`.
    pub verbose: bool,
    /// `-C` as given (tgt-admin pastes it into each tgtadm line); "0" if not.
    pub control_port: String,
}

/// The process should exit with this status (messages already printed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit(pub i32);

/// The default configuration file.
pub const DEFAULT_CONF: &str = "/etc/tgt/targets.conf";

/// One run of tgt-admin.
pub struct Admin<'a> {
    o: Options,
    out: &'a mut dyn Write,
    conf: Block,
    /// `%tgtadm_output`: each target's `show` text.
    output: HashMap<String, String>,
    /// `%tgtadm_output_tid`.
    output_tid: HashMap<String, i64>,
    /// `%tgtadm_output_name`.
    output_name: HashMap<i64, String>,
    next_tid: i64,
    accounts: HashSet<String>,
    default_driver: Option<String>,
    /// The target being worked on (messages).
    target: String,
}

type R<T = ()> = Result<T, Exit>;

/// Per backing store: its `lun` and `allow-in-use` from the config.
type DataKey = BTreeMap<String, BTreeMap<&'static str, Option<String>>>;

fn s(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or("").to_string()
}

fn len(v: Option<&Value>) -> bool {
    v.is_some_and(Value::has_length)
}

impl<'a> Admin<'a> {
    /// A run with these options, printing to `out`.
    pub fn new(mut o: Options, out: &'a mut dyn Write) -> Self {
        if o.control_port.is_empty() {
            o.control_port = "0".into();
        }
        Admin {
            o,
            out,
            conf: Block::default(),
            output: HashMap::new(),
            output_tid: HashMap::new(),
            output_name: HashMap::new(),
            next_tid: 0,
            accounts: HashSet::new(),
            default_driver: None,
            target: String::new(),
        }
    }

    fn cp(&self) -> String {
        self.o.control_port.clone()
    }

    fn say(&mut self, s: &str) {
        let _ = self.out.write_all(s.as_bytes());
        let _ = self.out.flush();
    }

    /// tgt-admin's `execute`: print (`-p`, `-v`) and run a line.
    fn execute(&mut self, line: &str) -> R {
        if self.o.pretend {
            self.say(&format!("{line}\n"));
            return Ok(());
        }
        if self.o.verbose {
            self.say(&format!("{line}\n"));
        }
        if line.is_empty() || line.starts_with('#') {
            return Ok(());
        }
        let code = tgtadm::run_line(line, self.out);
        if code != 0 && !self.o.ignore_errors {
            self.say(&format!("Command:\n\t{line}\nexited with code: {code}.\n"));
            return Err(Exit(code));
        }
        Ok(())
    }

    /// Run the action the options ask for.
    pub fn run(&mut self) -> R {
        if self.o.show {
            let l = format!("tgtadm -C {} --op show --mode target", self.cp());
            return self.execute(&l);
        }
        if self.o.execute {
            self.parse_configs()?;
            self.process_targets();
            self.process_accounts();
            self.add_targets(None, None, None)?;
            self.remove_targets()?;
        } else if let Some(d) = self.o.delete.clone() {
            self.delete_targets(&d)?;
        } else if let Some(u) = self.o.update.clone() {
            self.process_accounts();
            self.update_targets(&u)?;
        } else if self.o.dump {
            self.dump_config();
        } else if self.o.offline.is_some() {
            self.ready_offline("offline")?;
        } else if self.o.ready.is_some() {
            self.ready_offline("ready")?;
        } else {
            self.say("No action specified.\n");
        }
        Ok(())
    }

    fn parse_configs(&mut self) -> R {
        let path = match self.o.conf.clone() {
            Some(c) => {
                if !c.exists() {
                    eprintln!("Config file {} not found. Exiting...", c.display());
                    return Err(Exit(2));
                }
                let l = format!("# Using {} as configuration file\n", c.display());
                self.execute(&l)?;
                c.clone()
            }
            None => {
                let c = PathBuf::from(DEFAULT_CONF);
                if !c.exists() {
                    eprintln!("Config file {DEFAULT_CONF} not found. Exiting...");
                    return Err(Exit(2));
                }
                c
            }
        };
        let parsed = conf::parse_file(&path).and_then(|c| validate::validate(&c).map(|_| c));
        match parsed {
            Ok(c) => {
                self.conf = c;
                Ok(())
            }
            Err(e) => {
                eprintln!("{e}");
                eprintln!("Check your config file for errors; nothing was applied.");
                Err(Exit(1))
            }
        }
    }

    fn query(&self, what: &str) -> String {
        tgtadm::query_line(&format!("tgtadm -C {} --op show --mode {what}", self.cp()))
    }

    fn check_isns(&self) -> bool {
        self.query("sys").lines().any(|l| l.contains("iSNS=On"))
    }

    /// Targets the daemon has: `Target N: NAME` and the lines after it.
    fn process_targets(&mut self) {
        let text = self.query("target");
        let mut name: Option<String> = None;
        for line in text.split_inclusive('\n') {
            let head = line.strip_prefix("Target ").and_then(|r| {
                let (tid, n) = r.split_once(": ")?;
                let n = n.trim_end_matches('\n');
                (tid.chars().all(|c| c.is_ascii_digit()) && !n.is_empty())
                    .then(|| (tid.parse::<i64>().unwrap_or(0), n.to_string()))
            });
            if let Some((tid, n)) = head {
                self.output.insert(n.clone(), line.to_string());
                self.output_tid.insert(n.clone(), tid);
                self.output_name.insert(tid, n.clone());
                name = Some(n);
            } else if let Some(n) = &name {
                self.output.entry(n.clone()).or_default().push_str(line);
            }
        }
        self.next_tid = self.output_tid.values().copied().max().unwrap_or(0);
    }

    fn process_accounts(&mut self) {
        for l in self.query("account").lines() {
            if l.starts_with(char::is_whitespace) {
                self.accounts.insert(l.trim_start().to_string());
            }
        }
    }

    /// Known targets, by tid then name (tgt-admin: hash order).
    fn all_targets(&self) -> Vec<String> {
        let mut v: Vec<(i64, String)> = self
            .output_tid
            .iter()
            .map(|(n, t)| (*t, n.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }

    fn conf_targets(&self) -> Option<Vec<String>> {
        match self.conf.get("target") {
            Some(Value::Block(b)) => Some(b.entries.keys().cloned().collect()),
            _ => None,
        }
    }

    fn connected(&self, t: &str) -> bool {
        self.output.get(t).is_some_and(|o| {
            o.lines().any(|l| {
                l.trim_start().starts_with("Connection:") && l.starts_with(char::is_whitespace)
            })
        })
    }

    fn tid_of(&self, t: &str) -> String {
        self.output_tid
            .get(t)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    fn add_targets(
        &mut self,
        single: Option<&str>,
        configured: Option<bool>,
        in_configfile: Option<bool>,
    ) -> R {
        let isns = self.check_isns();
        let cp = self.cp();
        let globals: Vec<(String, Value)> = self
            .conf
            .entries
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in &globals {
            let val = v.as_str().unwrap_or("").to_string();
            match k.as_str() {
                "default-driver" => self.default_driver = Some(val),
                "ignore-errors" if val == "yes" => self.o.ignore_errors = true,
                "iSNSAccessControl" | "iSNSServerIP" | "iSNSServerPort" if !isns => {
                    self.execute(&format!(
                        "tgtadm -C {cp} --op update --mode sys --name {k} -v {val}"
                    ))?;
                }
                "incomingdiscoveryuser" | "outgoingdiscoveryuser" => {
                    let up: Vec<&str> = val.split(' ').collect();
                    let (u, p) = (up[0], up.get(1).copied().unwrap_or(""));
                    if !self.accounts.contains(u) {
                        self.execute(&format!(
                            "tgtadm -C {cp} --mode account --op new --user={u} --password={p}"
                        ))?;
                        self.accounts.insert(u.to_string());
                    }
                    let extra = if k == "outgoingdiscoveryuser" {
                        " --outgoing"
                    } else {
                        ""
                    };
                    self.execute(&format!(
                        "tgtadm -C {cp} --mode account --op bind --user={u} {extra}"
                    ))?;
                }
                _ => {}
            }
        }
        for (k, v) in &globals {
            let val = v.as_str().unwrap_or("").to_string();
            match k.as_str() {
                "iSNS" => {
                    if !isns {
                        self.execute(&format!(
                            "tgtadm -C {cp} --op update --mode sys --name {k} -v {val}"
                        ))?;
                    } else {
                        self.execute("# iSNS already enabled")?;
                    }
                }
                "control-port" => {
                    if self.o.control_port == "0" {
                        self.o.control_port = val;
                    } else {
                        self.say("Multiple control-port definitions are not allowed!\n");
                        self.say("Check your config file for errors.\n");
                        return Err(Exit(1));
                    }
                }
                _ => {}
            }
        }
        if self.default_driver.is_none() {
            self.execute("# default-driver not defined, defaulting to iscsi.\n")?;
            self.default_driver = Some("iscsi".into());
        }
        let Some(Value::Block(targets)) = self.conf.get("target").cloned() else {
            return Ok(());
        };
        for (k2, tconf) in &targets.entries {
            let Value::Block(tconf) = tconf else { continue };
            if let Some(sg) = single {
                if sg != k2 {
                    continue;
                }
            }
            self.target = k2.clone();
            let target = k2.clone();
            let mut in_use = false;
            if single.is_some() {
                in_use = self.main_delete(&target, None)?;
            }
            let update = self.o.update.is_some();
            if !self.output.contains_key(k2)
                || (update && (!in_use || (self.o.pretend && self.o.force)))
            {
                if in_configfile == Some(true) && configured == Some(false) && !self.o.pretend {
                    self.next_tid = self.output_tid.values().copied().fold(0, i64::max) + 1;
                } else if single.is_some() && configured == Some(true) {
                    self.next_tid = self.output_tid.get(&target).copied().unwrap_or(0);
                } else {
                    self.next_tid += 1;
                }
                let topts = &tconf.entries;
                let mut data_key = make_key(topts);
                if let Some(c) = topts.get("controller_tid").and_then(Value::as_str) {
                    self.next_tid = c.parse().unwrap_or(0);
                }
                let driver = topts
                    .get("driver")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .unwrap_or_else(|| self.default_driver.clone().unwrap_or_default());
                self.execute(&format!("# Adding target: {target}"))?;
                self.execute(&format!(
                    "tgtadm -C {} --lld {driver} --op new --mode target --tid {} -T {target}",
                    self.cp(),
                    self.next_tid
                ))?;
                let mut allowall = true;
                for (opt, value) in topts {
                    self.process_option(opt, value, topts, &mut data_key, &driver)?;
                    if opt == "initiator-address" {
                        allowall = false;
                    }
                }
                if allowall {
                    self.execute(&format!(
                        "tgtadm -C {} --lld {driver} --op bind --mode target --tid {} -I ALL",
                        self.cp(),
                        self.next_tid
                    ))?;
                }
            } else if configured.is_none() {
                self.execute(&format!("# Target {target} already exists!"))?;
            }
            self.output_tid.insert(target, self.next_tid);
        }
        if let Some(sg) = single {
            if in_configfile == Some(false) && configured == Some(false) {
                self.say(&format!(
                    "Target {sg} is currently not configured\nand does not exist in the config file - can't continue!\n"
                ));
                return Err(Exit(1));
            }
        }
        self.execute("")
    }

    fn process_option(
        &mut self,
        opt: &str,
        value: &Value,
        topts: &BTreeMap<String, Value>,
        data_key: &mut DataKey,
        driver: &str,
    ) -> R {
        let cp = self.cp();
        let tid = self.next_tid;
        match opt {
            "backing-store" | "direct-store" => {
                let direct = opt == "direct-store";
                // Everything becomes a map of path -> per-store options.
                let mut stores: BTreeMap<String, Option<Block>> = BTreeMap::new();
                match value {
                    Value::Scalar(Some(p), _) => {
                        stores.insert(p.clone(), None);
                    }
                    Value::List(l) => {
                        for it in l {
                            if let Some(p) = it.as_str() {
                                stores.insert(p.to_string(), None);
                            }
                        }
                    }
                    Value::Block(b) => {
                        for (p, v) in &b.entries {
                            let blk = match v {
                                Value::Block(b) => Some(b.clone()),
                                _ => None,
                            };
                            stores.insert(p.clone(), blk);
                        }
                    }
                    Value::Scalar(None, _) => {}
                }
                for (path, sopts) in &stores {
                    self.add_backing_direct(path, sopts.as_ref(), topts, data_key, direct, driver)?;
                }
            }
            "incominguser" => {
                for it in value.items() {
                    let v = it.as_str().unwrap_or("");
                    let up: Vec<&str> = v.split(' ').collect();
                    let (u, p) = (up[0], up.get(1).copied().unwrap_or(""));
                    if !self.accounts.contains(u) {
                        self.execute(&format!("tgtadm -C {cp} --lld {driver} --mode account --op new --user={u} --password={p}"))?;
                        self.accounts.insert(u.to_string());
                    }
                    self.execute(&format!("tgtadm -C {cp} --lld {driver} --mode account --op bind --tid={tid} --user={u}"))?;
                }
            }
            "outgoinguser" => {
                let items = value.items();
                if items.len() > 1 {
                    self.execute(&format!(
                        "# Warning: only one {opt} is allowed. Will only use the first one."
                    ))?;
                }
                let v = items[0].as_str().unwrap_or("");
                let up: Vec<&str> = v.split(' ').collect();
                let (u, p) = (up[0], up.get(1).copied().unwrap_or(""));
                if !self.accounts.contains(u) {
                    self.execute(&format!("tgtadm -C {cp} --lld {driver} --mode account --op new --user={u} --password={p}"))?;
                    self.accounts.insert(u.to_string());
                }
                self.execute(&format!("tgtadm -C {cp} --lld {driver} --mode account --op bind --tid={tid} --user={u} --outgoing"))?;
            }
            "initiator-address" => {
                for it in value.items() {
                    let a = it.as_str().unwrap_or("");
                    self.execute(&format!(
                        "tgtadm -C {cp} --lld {driver} --op bind --mode target --tid {tid} -I {a}"
                    ))?;
                }
            }
            "initiator-name" => {
                for it in value.items() {
                    let a = it.as_str().unwrap_or("");
                    self.execute(&format!(
                        "tgtadm -C {cp} --lld {driver} --op bind --mode target --tid {tid} -Q {a}"
                    ))?;
                }
            }
            o if SESSION_KEYS.contains(&o) || o.starts_with("state") => {
                let items = value.items();
                if items.len() > 1 {
                    self.execute(&format!(
                        "# Warning: only one {opt} is allowed. Will only use the first one."
                    ))?;
                }
                let v = items[0].as_str().unwrap_or("");
                self.execute(&format!("tgtadm -C {cp} --lld {driver} --mode target --op update --tid {tid} --name {opt} --value {v}"))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// tgt-admin's `add_params`: the line that sets one LUN parameter.
    fn add_params(&self, param: &str, value: &str, lun: &str, driver: &str) -> Option<String> {
        let (cp, tid) = (self.cp(), self.next_tid);
        let head = format!(
            "tgtadm -C {cp} --lld {driver} --op update --mode logicalunit --tid {tid} --lun={lun}"
        );
        if param == "write-cache" {
            return Some(if value == "off" {
                format!("{head} --params mode_page=8:0:18:0x10:0:0xff:0xff:0:0:0xff:0xff:0xff:0xff:0x80:0x14:0:0:0:0:0:0")
            } else if value == "on" || value.is_empty() {
                format!("# Write cache is enabled (default) for lun {lun}.")
            } else {
                format!("# WARNING! Unknown value ({value}) to write-cache! Accepted values are \"on\" and \"off\".")
            });
        }
        if LUN_PARAMS.contains(&param) {
            return Some(format!("{head} --params {param}=\"{value}\""));
        }
        if param == "params" {
            return Some(format!("{head} --params \"{value}\""));
        }
        None
    }

    fn add_backing_direct(
        &mut self,
        bs: &str,
        sopts: Option<&Block>,
        topts: &BTreeMap<String, Value>,
        data_key: &mut DataKey,
        direct: bool,
        driver: &str,
    ) -> R {
        let bstype = s(topts.get("bs-type"));
        let mut can_alloc = true;
        if !bstype.contains("rbd") && !self.o.force && s(topts.get("allow-in-use")) != "yes" {
            can_alloc = self.check_device(bs, data_key)?;
        }
        let p = std::path::Path::new(bs);
        let exists =
            bstype.contains("glfs") || bstype.contains("rbd") || (p.exists() && !p.is_dir());
        if !(can_alloc && exists) {
            if !can_alloc {
                self.execute(&format!("# Skipping device {bs} - it is in use."))?;
                self.execute(
                    "# You can override it with --force or 'allow-in-use yes' config option.",
                )?;
                self.execute(
                    "# Note - do so only if you know what you're doing, you may damage your data.",
                )?;
            } else {
                self.execute(&format!("# Skipping device: {bs}"))?;
                self.execute(&format!(
                    "# {bs} does not exist - please check the configuration file"
                ))?;
            }
            return Ok(());
        }
        let mut lun = match data_key
            .get(bs)
            .and_then(|d| d.get("lun"))
            .cloned()
            .flatten()
        {
            Some(l) if !l.is_empty() => l,
            _ => find_next_lun(bs, data_key),
        };
        if len(topts.get("lun")) {
            lun = s(topts.get("lun"));
        }
        let mut cmds: Vec<String> = Vec::new();
        let mut added: HashSet<String> = HashSet::new();
        let (mut device_type, mut bs_type, mut bsopts, mut bsoflags, mut block_size) =
            (None, None, None, None, None);
        if let Some(so) = sopts {
            for (o, v) in &so.entries {
                let r = v.as_str().unwrap_or("").to_string();
                if o != "mode_page" && o != "write-cache" && o != "params" {
                    cmds.extend(self.add_params(o, &r, &lun, driver));
                    added.insert(o.clone());
                }
                match o.as_str() {
                    "write-cache" => {
                        cmds.extend(self.add_params(o, &r, &lun, driver));
                        added.insert("write_cache".into());
                    }
                    "device-type" => device_type = Some(r),
                    "bs-type" => bs_type = Some(r),
                    "bsopts" => bsopts = Some(r),
                    "bsoflags" => bsoflags = Some(r),
                    "block-size" => block_size = Some(r),
                    "mode_page" | "params" => {
                        for it in v.items() {
                            cmds.extend(self.add_params(
                                o,
                                it.as_str().unwrap_or(""),
                                &lun,
                                driver,
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        let mut direct_params: HashMap<&str, String> = HashMap::new();
        if direct {
            direct_params = sg_params(bs, topts, &mut block_size);
        }
        for o in [
            "scsi_id",
            "sense_format",
            "removable",
            "online",
            "path",
            "readonly",
        ] {
            if !added.contains(o) && len(topts.get(o)) {
                cmds.extend(self.add_params(o, &s(topts.get(o)), &lun, driver));
                added.insert(o.into());
            }
        }
        for o in [
            "vendor_id",
            "product_id",
            "product_rev",
            "scsi_sn",
            "lbppbe",
            "la_lba",
            "optimal_xfer_gran",
            "optimal_xfer_len",
        ] {
            let this = if len(topts.get(o)) {
                s(topts.get(o))
            } else {
                direct_params.get(o).cloned().unwrap_or_default()
            };
            if !added.contains(o) && !this.is_empty() {
                cmds.extend(self.add_params(o, &this, &lun, driver));
                added.insert(o.into());
            }
        }
        if !added.contains("write_cache") {
            cmds.extend(self.add_params("write-cache", &s(topts.get("write-cache")), &lun, driver));
        }
        for o in ["mode_page", "params"] {
            if let Some(v) = topts.get(o) {
                for it in v.items() {
                    if it.has_length() {
                        cmds.extend(self.add_params(o, it.as_str().unwrap_or(""), &lun, driver));
                    }
                }
            }
        }
        let pick = |mine: Option<String>, key: &str, name: &str| -> String {
            let v = match mine {
                Some(v) => v,
                None => s(topts.get(key)),
            };
            if v.is_empty() {
                String::new()
            } else {
                format!("--{name} {v}")
            }
        };
        let dt = pick(device_type, "device-type", "device-type");
        let bt = pick(bs_type, "bs-type", "bstype");
        let bo = pick(bsopts, "bsopts", "bsopts");
        let bf = pick(bsoflags, "bsoflags", "bsoflags");
        let bk = match block_size {
            Some(v) if !v.is_empty() => format!("--blocksize {v}"),
            _ => String::new(),
        };
        self.execute(&format!(
            "tgtadm -C {} --lld {driver} --op new --mode logicalunit --tid {} --lun {lun} -b \"{bs}\" {dt} {bt} {bo} {bf} {bk}",
            self.cp(),
            self.next_tid
        ))?;
        let (first, last): (Vec<String>, Vec<String>) = cmds
            .into_iter()
            .filter(|c| !c.is_empty())
            .partition(|c| c.contains("params mode_page"));
        for c in first.iter().chain(last.iter()) {
            self.execute(c)?;
        }
        Ok(())
    }

    /// tgt-admin's `check_device`: false when the device is in use.
    fn check_device(&mut self, bs: &str, data_key: &DataKey) -> R<bool> {
        if data_key
            .get(bs)
            .and_then(|d| d.get("allow-in-use").cloned().flatten())
            .as_deref()
            == Some("yes")
        {
            return Ok(true);
        }
        let p = std::path::Path::new(bs);
        if !p.exists() {
            return Ok(true);
        }
        {
            use std::os::unix::fs::OpenOptionsExt;
            let r = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_EXCL)
                .open(p);
            if let Err(e) = r {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    self.execute(&format!(
                        "# Device {bs} is used by the system (mounted, used by swap?)."
                    ))?;
                    return Ok(false);
                }
            }
        }
        if !validate::in_path("lsof") {
            self.execute("# Command 'lsof' is not in your path.")?;
            self.execute("# Can't reliably check if device is not in use.")?;
            return Ok(true);
        }
        let busy = std::process::Command::new("lsof")
            .arg(bs)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if busy {
            self.execute(&format!("# Device {bs} is used (already tgtd target?)."))?;
            self.execute(&format!("# Run 'lsof {bs}' to see the details."))?;
            return Ok(false);
        }
        Ok(true)
    }

    fn remove_targets(&mut self) -> R {
        self.process_targets();
        let Some(in_conf) = self.conf_targets() else {
            return Ok(());
        };
        for t in self.all_targets() {
            if !in_conf.contains(&t) {
                self.main_delete(&t, None)?;
            }
        }
        Ok(())
    }

    /// The ACL lines of a target's show text.
    fn acls(&self, t: &str) -> Vec<String> {
        let o = self.output.get(t).map(String::as_str).unwrap_or("");
        let Some(at) = o.find("ACL information:\n") else {
            return Vec::new();
        };
        o[at + "ACL information:\n".len()..]
            .lines()
            .map(|l| {
                if l.starts_with(char::is_whitespace) {
                    l.trim_start().to_string()
                } else {
                    String::new()
                }
            })
            .collect()
    }

    fn accounts_of(&self, t: &str) -> Vec<String> {
        let o = self.output.get(t).map(String::as_str).unwrap_or("");
        let (Some(a), Some(b)) = (
            o.find("Account information:\n"),
            o.rfind("ACL information:"),
        ) else {
            return Vec::new();
        };
        let start = a + "Account information:\n".len();
        if b <= start {
            return Vec::new();
        }
        o[start..b]
            .lines()
            .filter(|l| l.starts_with(char::is_whitespace))
            .map(|l| l.trim_start().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// sid -> cid of the target's sessions (the last connection listed).
    fn sessions(&self, t: &str) -> BTreeMap<String, String> {
        let o = self.output.get(t).map(String::as_str).unwrap_or("");
        let mut m = BTreeMap::new();
        let (Some(a), Some(b)) = (
            o.find("I_T nexus information:\n"),
            o.rfind("LUN information:"),
        ) else {
            return m;
        };
        let mut sid = String::new();
        for l in o[a..b].lines().skip(1) {
            let t = l.trim_start();
            if let Some(v) = t.strip_prefix("I_T nexus: ") {
                sid = v.to_string();
            } else if let Some(v) = t.strip_prefix("Connection: ") {
                m.insert(sid.clone(), v.to_string());
            }
        }
        m
    }

    /// tgt-admin's `main_delete`; true when the target is in use and kept.
    fn main_delete(&mut self, t: &str, tid: Option<&str>) -> R<bool> {
        let configured = self.output_tid.contains_key(t);
        let cp = self.cp();
        let ttid = self.tid_of(t);
        if self.connected(t) {
            if self.o.force {
                self.execute(&format!("# Removing target: {t}"))?;
                for acl in self.acls(t) {
                    self.execute(&format!(
                        "tgtadm -C {cp} --op unbind --mode target --tid {ttid} -I {acl}"
                    ))?;
                }
                for (sid, cid) in self.sessions(t) {
                    self.execute(&format!(
                        "tgtadm -C {cp} --op delete --mode conn --tid {ttid} --sid {sid} --cid {cid}"
                    ))?;
                }
                self.execute(&format!(
                    "tgtadm -C {cp} --mode target --op delete --tid={ttid}"
                ))?;
            } else {
                let what = if self.o.update.is_some() {
                    "updated"
                } else {
                    "deleted"
                };
                self.execute(&format!(
                    "# Target with tid {ttid} ({t}) is in use, it won't be {what}."
                ))?;
                return Ok(true);
            }
        } else if !ttid.is_empty() {
            self.execute(&format!("# Removing target: {t}"))?;
            self.execute(&format!(
                "tgtadm -C {cp} --mode target --op delete --tid={ttid}"
            ))?;
        } else if let Some(n) = tid {
            self.execute(&format!("# Target with tid {n} does not exist!"))?;
        } else {
            self.execute(&format!("# Target with name {t} does not exist!"))?;
        }
        if configured {
            self.execute("")?;
        }
        Ok(false)
    }

    fn help(&mut self, what: &str, var: &str) {
        let extra = if var == "delete" || var == "update" {
            format!(
                "\t\t\t\tThe target will be {var}d only if it's not used\n\
                 \t\t\t\t(no initiator is connected to it).\n\
                 \t\t\t\tIf you want to {var} targets which are in use,\n\
                 \t\t\t\tyou have to add \"--force\" flag.\n"
            )
        } else {
            String::new()
        };
        self.say(&format!(
            "      --{var} <value>\t\t{what} all or selected targets\n{extra}\n\
Example usage:\n\
      --{var} help\t      - display this help\n\
      --{var} ALL\t      - {var} all targets\n\
      --{var} tid=4\t      - {var} target 4 (target with tid 4)\n\
      --{var} iqn.2008-08.com.example:some.target - {var} this target\n\n"
        ));
    }

    fn delete_targets(&mut self, d: &str) -> R {
        if d == "help" {
            self.help("delete", "delete");
            return Ok(());
        }
        self.process_targets();
        if d == "ALL" {
            for t in self.all_targets() {
                self.main_delete(&t, None)?;
            }
        } else if let Some(n) = d.strip_prefix("tid=") {
            let t = n
                .parse::<i64>()
                .ok()
                .and_then(|n| self.output_name.get(&n).cloned())
                .unwrap_or_default();
            self.main_delete(&t, Some(n))?;
        } else {
            self.main_delete(d, None)?;
        }
        Ok(())
    }

    fn update_targets(&mut self, u: &str) -> R {
        if u == "help" {
            self.help("update", "update");
            return Ok(());
        }
        self.parse_configs()?;
        self.process_targets();
        let in_conf = self.conf_targets();
        let in_cf = |t: &str| in_conf.as_ref().map(|c| c.iter().any(|x| x == t));
        if u == "ALL" {
            let mut combined: Vec<String> = self
                .all_targets()
                .into_iter()
                .filter(|t| !in_conf.as_ref().is_some_and(|c| c.contains(t)))
                .collect();
            combined.extend(in_conf.clone().unwrap_or_default());
            for t in combined {
                let configured = self.output_tid.contains_key(&t);
                let icf = in_cf(&t);
                if icf != Some(true) && configured {
                    self.main_delete(&t, None)?;
                } else {
                    self.add_targets(Some(&t), Some(configured), icf)?;
                }
            }
        } else if let Some(n) = u.strip_prefix("tid=") {
            let t = n
                .parse::<i64>()
                .ok()
                .and_then(|n| self.output_name.get(&n).cloned())
                .unwrap_or_default();
            let configured = self.output_tid.contains_key(&t);
            let icf = in_cf(&t);
            if icf != Some(true) && configured {
                self.main_delete(&t, None)?;
            } else if configured {
                self.add_targets(Some(&t), Some(configured), icf)?;
            } else {
                self.say(&format!(
                    "There is no target with tid {n}, can't continue!\n"
                ));
                return Err(Exit(1));
            }
        } else {
            let configured = self.output_tid.contains_key(u);
            let icf = in_cf(u);
            if icf != Some(true) && configured {
                self.main_delete(u, None)?;
            } else {
                self.add_targets(Some(u), Some(configured), Some(icf == Some(true)))?;
            }
        }
        Ok(())
    }

    fn target_driver(&self, t: &str) -> String {
        self.output
            .get(t)
            .and_then(|o| {
                o.lines()
                    .find_map(|l| l.trim_start().strip_prefix("Driver: ").map(str::to_string))
            })
            .unwrap_or_default()
    }

    /// tgt-admin's `--dump`.
    pub fn dump_config(&mut self) {
        self.process_targets();
        let all = self.all_targets();
        let drivers: std::collections::BTreeSet<String> =
            all.iter().map(|t| self.target_driver(t)).collect();
        let mut b = String::new();
        if drivers.len() == 1 {
            b.push_str(&format!(
                "default-driver {}\n\n",
                drivers.iter().next().unwrap()
            ));
        }
        for t in &all {
            b.push_str(&format!("<target {t}>\n"));
            if drivers.len() > 1 {
                b.push_str(&format!("\tdriver {}\n", self.target_driver(t)));
            }
            let o = self.output.get(t).cloned().unwrap_or_default();
            for l in o.lines() {
                if let Some(p) = l.trim_start().strip_prefix("Backing store path: ") {
                    if l.starts_with(char::is_whitespace) && p != "None" {
                        b.push_str(&format!("\tbacking-store {p}\n"));
                    }
                }
            }
            for a in self.accounts_of(t) {
                if let Some(u) = a.strip_suffix(" (outgoing)") {
                    b.push_str(&format!("\toutgoinguser {u} PLEASE_CORRECT_THE_PASSWORD\n"));
                } else {
                    b.push_str(&format!("\tincominguser {a} PLEASE_CORRECT_THE_PASSWORD\n"));
                }
            }
            let acls = self.acls(t);
            if !(acls.len() == 1 && acls[0] == "ALL") {
                for a in acls {
                    if !a.is_empty()
                        && a.bytes()
                            .all(|c| c.is_ascii_digit() || c == b',' || c == b'.' || c == b'E')
                    {
                        b.push_str(&format!("\tinitiator-address {a}\n"));
                    } else {
                        b.push_str(&format!("\tinitiator-name {a}\n"));
                    }
                }
            }
            b.push_str("</target>\n\n");
        }
        self.say(&b);
    }

    fn ready_offline(&mut self, var: &str) -> R {
        let v = match (&self.o.ready, &self.o.offline) {
            (None, Some(v)) | (Some(v), None) => v.clone(),
            _ => {
                self.say("Invalid value (you can't use both ready and offline)!\n");
                return Err(Exit(1));
            }
        };
        let cp = self.cp();
        if v == "help" {
            self.help(var, var);
            return Ok(());
        }
        self.process_targets();
        if v == "ALL" {
            for t in self.all_targets() {
                let tid = self.tid_of(&t);
                self.execute(&format!(
                    "tgtadm -C {cp} --op update --mode target --tid={tid} -n state -v {var}"
                ))?;
            }
        } else if let Some(n) = v
            .find("tid=")
            .map(|i| v[i + 4..].to_string())
            .filter(|n| !n.is_empty())
        {
            self.execute(&format!(
                "tgtadm -C {cp} --op update --mode target --tid={n} -n state -v {var}"
            ))?;
        } else {
            let tid = self.tid_of(&v);
            if !tid.is_empty() {
                self.execute(&format!("tgtadm -C {cp} --op update --mode target --tid={tid} --name=\"{v}\" -n state -v {var}"))?;
            } else {
                self.say(&format!(
                    "There is no target with name \"{v}\", can't {var} it!\n"
                ));
                return Err(Exit(1));
            }
        }
        Ok(())
    }
}

/// iSCSI session keys a target block may set (tgt-admin's list).
pub const SESSION_KEYS: &[&str] = &[
    "MaxRecvDataSegmentLength",
    "MaxXmitDataSegmentLength",
    "HeaderDigest",
    "DataDigest",
    "InitialR2T",
    "MaxOutstandingR2T",
    "ImmediateData",
    "FirstBurstLength",
    "MaxBurstLength",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "IFMarker",
    "OFMarker",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "OFMarkInt",
    "IFMarkInt",
    "MaxConnections",
];

/// LUN parameters set with `--params NAME="VALUE"`.
pub const LUN_PARAMS: &[&str] = &[
    "scsi_id",
    "scsi_sn",
    "vendor_id",
    "product_id",
    "product_rev",
    "sense_format",
    "removable",
    "online",
    "path",
    "mode_page",
    "lbppbe",
    "la_lba",
    "optimal_xfer_gran",
    "optimal_xfer_len",
    "readonly",
];

/// tgt-admin's `make_key`: each `<backing-store>`/`<direct-store>` block's
/// `lun` and `allow-in-use`.
fn make_key(topts: &BTreeMap<String, Value>) -> DataKey {
    let mut dk = DataKey::new();
    for k in ["backing-store", "direct-store"] {
        if let Some(Value::Block(b)) = topts.get(k) {
            for (p, v) in &b.entries {
                let e = dk.entry(p.clone()).or_default();
                for a in ["lun", "allow-in-use"] {
                    let val = match v {
                        Value::Block(sb) => sb.str(a).map(str::to_string),
                        _ => None,
                    };
                    e.insert(a, val);
                }
            }
        }
    }
    dk
}

/// tgt-admin's `find_next_lun`: the lowest number from 1 that equals no
/// value already recorded (compared as strings, as Perl's `eq`).
fn find_next_lun(bs: &str, dk: &mut DataKey) -> String {
    let mut n = 1u64;
    loop {
        let s = n.to_string();
        let taken = dk
            .values()
            .any(|m| m.values().any(|v| v.as_deref() == Some(&s)));
        if !taken {
            dk.entry(bs.to_string())
                .or_default()
                .insert("lun", Some(s.clone()));
            return s;
        }
        n += 1;
    }
}

fn run_capture(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn after<'t>(text: &'t str, label: &str) -> Option<&'t str> {
    let at = text.find(label)? + label.len();
    let rest = &text[at..];
    Some(rest.split('\n').next().unwrap_or(""))
}

fn leading_num(s: &str) -> Option<String> {
    let t = s.trim_start();
    let d: String = t.chars().take_while(char::is_ascii_digit).collect();
    (!d.is_empty()).then_some(d)
}

/// For a direct-store: inquiry data and limits read from the device with
/// sg3_utils, for what the target block did not set.
fn sg_params(
    bs: &str,
    topts: &BTreeMap<String, Value>,
    block_size: &mut Option<String>,
) -> HashMap<&'static str, String> {
    let mut m = HashMap::new();
    let inq = run_capture("sg_inq", &[bs]);
    if let (Some(v), Some(p), Some(r)) = (
        after(&inq, "Vendor identification:"),
        after(&inq, "Product identification:"),
        after(&inq, "Product revision level:"),
    ) {
        let one = |s: &str| s.strip_prefix(char::is_whitespace).unwrap_or(s).to_string();
        let all = |s: &str| s.trim_start().to_string();
        let sn = after(&inq, "Unit serial number:")
            .map(all)
            .unwrap_or_default();
        for (k, val) in [
            ("vendor_id", one(v)),
            ("product_id", all(p)),
            ("product_rev", all(r)),
            ("scsi_sn", sn),
        ] {
            if !len(topts.get(k)) {
                m.insert(k, val);
            }
        }
    }
    let b0 = run_capture("sg_inq", &["-p", "0xb0", bs]);
    if let (Some(g), Some(l)) = (
        after(&b0, "Optimal transfer length granularity:").and_then(leading_num),
        after(&b0, "\n  Optimal transfer length:")
            .or_else(|| after(&b0, "Optimal transfer length:"))
            .and_then(leading_num),
    ) {
        if !len(topts.get("optimal_xfer_gran")) {
            m.insert("optimal_xfer_gran", g);
        }
        if !len(topts.get("optimal_xfer_len")) {
            m.insert("optimal_xfer_len", l);
        }
    }
    let rc = run_capture("sg_readcap", &["-16", bs]);
    if let (Some(bl), Some(e), Some(a)) = (
        after(&rc, "Logical block length=").and_then(leading_num),
        after(&rc, "Logical blocks per physical block exponent=").and_then(leading_num),
        after(&rc, "Lowest aligned logical block address=").and_then(leading_num),
    ) {
        if block_size.as_deref().is_none_or(str::is_empty) {
            *block_size = Some(bl);
        }
        if !len(topts.get("lbppbe")) {
            m.insert("lbppbe", e);
        }
        if !len(topts.get("la_lba")) {
            m.insert("la_lba", a);
        }
    }
    m
}
