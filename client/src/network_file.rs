//! `network.toml`: every branch's id, name, and its replicas' keys and addresses. A
//! node accepts 2PC messages only from branches listed here and verifies every
//! signature against the signing branch's listed keys; tellers use it to find a branch
//! by name and pin its keys.
//!
//! ```toml
//! [[branch]]
//! id = 1                      # 1..=999, the branch code of its account numbers
//! name = "Mumbai"
//! public_key = "37962e4b..."  # 64 hex digits, or
//! peer_id = "12D3KooW..."     # its PeerId (both may be given: they must agree)
//! addresses = ["/ip4/127.0.0.1/tcp/7001"]
//! ```
//!
//! One setting may come before the tables: `fence_lease_ms`, how long a branch may
//! move money after another branch last confirmed that it is the only copy serving
//! (see `wire::fence`; default 30 s). Every node must use the same value, which is why
//! it lives in the one file they all share.
//!
//! `branch-node init` prints exactly such a block. A branch that runs as several
//! replicas lists each instead of one key and address list, every replica with its
//! own key (its libp2p identity) and a replica id unique within the branch:
//!
//! ```toml
//! [[branch]]
//! id = 2
//! name = "Pune"
//! [[branch.replica]]
//! id = 1
//! peer_id = "12D3KooW..."
//! addresses = ["/ip4/10.0.0.5/tcp/7001"]
//! [[branch.replica]]
//! id = 2
//! peer_id = "12D3KooW..."
//! addresses = ["/ip4/10.0.0.6/tcp/7001"]
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use multiaddr::{Multiaddr, Protocol};
use serde::Deserialize;
use wire::limits::{ACCOUNT_BRANCH_MAX, TEXT_FIELD_BYTES_MAX};
use wire::{BranchId, BranchPublicKey, PeerId};

/// One branch as the network file lists it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchEntry {
    pub id: BranchId,
    pub name: String,
    /// Its replicas by replica id: one (id 1) for a branch that is not replicated.
    pub replicas: Vec<ReplicaEntry>,
}

/// One replica of a branch: its own key (and so its PeerId) and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaEntry {
    pub id: u64,
    pub public_key: BranchPublicKey,
    pub peer_id: PeerId,
    pub addresses: Vec<Multiaddr>,
}

/// Most replicas one branch may list.
pub const REPLICAS_MAX: usize = 7;

impl BranchEntry {
    /// The replica with id `id`.
    pub fn replica(&self, id: u64) -> Option<&ReplicaEntry> {
        self.replicas.iter().find(|r| r.id == id)
    }

    /// The replica whose PeerId is `peer`.
    pub fn replica_by_peer(&self, peer: &PeerId) -> Option<&ReplicaEntry> {
        self.replicas.iter().find(|r| &r.peer_id == peer)
    }

    /// True when the branch runs as more than one replica.
    pub fn is_replicated(&self) -> bool {
        self.replicas.len() > 1
    }

    /// `signed` checked against the branch's replica keys in `domain`: a message signed by
    /// any of its replicas (whichever led when it was signed) is the branch's.
    pub fn verify_in_domain<T>(
        &self,
        signed: &wire::signed::Signed<T>,
        domain: &[u8],
    ) -> Result<T, wire::VerifyError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let mut last = Err(wire::VerifyError::BadSignature);
        for r in &self.replicas {
            last = signed.verify_in_domain(domain, &r.public_key);
            if last.is_ok() {
                break;
            }
        }
        last
    }

    /// The first replica (a branch that is not replicated has only this one).
    pub fn first(&self) -> &ReplicaEntry {
        &self.replicas[0]
    }
}

/// The whole network, checked: ids, names and keys are unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkFile {
    branches: BTreeMap<BranchId, BranchEntry>,
    fence_lease_ms: u64,
}

/// Why a network file is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkFileError {
    #[error("cannot read network file: {0}")]
    Read(String),
    #[error("network file is not valid TOML: {0}")]
    Toml(String),
    #[error("network file lists no [[branch]]")]
    Empty,
    #[error("branch id {0} is out of range 1..={ACCOUNT_BRANCH_MAX}")]
    IdRange(u16),
    #[error("branch id {0} is listed twice")]
    DuplicateId(u16),
    #[error("branch {0}: name must be 1..={TEXT_FIELD_BYTES_MAX} bytes of printable text")]
    Name(u16),
    #[error("branch name {0:?} is listed twice")]
    DuplicateName(String),
    #[error("branch {0}: give public_key or peer_id")]
    NoKey(u16),
    #[error("branch {0}: public_key is not 64 hex digits of an ed25519 key")]
    BadKey(u16),
    #[error("branch {0}: peer_id is not an ed25519 PeerId")]
    BadPeerId(u16),
    #[error("branch {0}: public_key and peer_id name different keys")]
    KeyMismatch(u16),
    #[error("branch {0}: its key is also listed for another branch")]
    DuplicateKey(u16),
    #[error("branch {0}: address {1:?} is not a multiaddr, or its /p2p/ part names another peer")]
    BadAddress(u16, String),
    #[error("branch {0}: give its key and addresses, or [[branch.replica]] tables, not both")]
    KeyAndReplicas(u16),
    #[error("branch {0}: lists more than {REPLICAS_MAX} replicas")]
    TooManyReplicas(u16),
    #[error("branch {0}: replica id {1} is listed twice (replica ids are 1 and up)")]
    ReplicaId(u16, u64),
    #[error(
        "fence_lease_ms {0} is out of range {min}..={max}",
        min = wire::limits::FENCE_LEASE_MS_MIN,
        max = wire::limits::FENCE_LEASE_MS_MAX
    )]
    FenceLease(u64),
    /// Any of the others, in file `path`.
    #[error("{path}: {error}")]
    File {
        path: String,
        error: Box<NetworkFileError>,
    },
    /// Any of the above, with where in the file it was found (1-based).
    #[error("line {line}, column {column}: {error}")]
    At {
        line: usize,
        column: usize,
        error: Box<NetworkFileError>,
    },
}

impl NetworkFileError {
    /// This error at byte `offset` of `text`, as a line and column people can find.
    fn at(self, text: &str, offset: usize) -> NetworkFileError {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        NetworkFileError::At {
            line,
            column,
            error: Box::new(self),
        }
    }

    /// The error without its place in the file.
    pub fn bare(&self) -> &NetworkFileError {
        match self {
            NetworkFileError::At { error, .. } | NetworkFileError::File { error, .. } => {
                error.bare()
            }
            e => e,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    fence_lease_ms: Option<u64>,
    #[serde(default)]
    branch: Vec<toml::Spanned<RawBranch>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBranch {
    id: u16,
    name: String,
    public_key: Option<String>,
    peer_id: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    replica: Vec<RawReplica>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReplica {
    id: u64,
    public_key: Option<String>,
    peer_id: Option<String>,
    #[serde(default)]
    addresses: Vec<String>,
}

impl NetworkFile {
    /// Reads and checks a network file.
    /// An error names the file (and where in it: [`NetworkFile::parse`]).
    pub fn load(path: &Path) -> Result<NetworkFile, NetworkFileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| NetworkFileError::Read(format!("{}: {e}", path.display())))?;
        NetworkFile::parse(&text).map_err(|error| NetworkFileError::File {
            path: path.display().to_string(),
            error: Box::new(error),
        })
    }

    /// Parses and checks the text of a network file. An error names the line and
    /// column where it was found (a branch's own errors: where its table starts).
    pub fn parse(text: &str) -> Result<NetworkFile, NetworkFileError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let error = NetworkFileError::Toml(e.message().to_owned());
            match e.span() {
                Some(span) => error.at(text, span.start),
                None => error,
            }
        })?;
        if raw.branch.is_empty() {
            return Err(NetworkFileError::Empty);
        }
        let fence_lease_ms = raw.fence_lease_ms.unwrap_or(wire::limits::FENCE_LEASE_MS);
        if !(wire::limits::FENCE_LEASE_MS_MIN..=wire::limits::FENCE_LEASE_MS_MAX)
            .contains(&fence_lease_ms)
        {
            return Err(NetworkFileError::FenceLease(fence_lease_ms));
        }
        let mut branches: BTreeMap<BranchId, BranchEntry> = BTreeMap::new();
        for b in raw.branch {
            let start = b.span().start;
            let entry = check(b.into_inner()).map_err(|e| e.at(text, start))?;
            let located = |e: NetworkFileError| e.at(text, start);
            if branches.contains_key(&entry.id) {
                return Err(located(NetworkFileError::DuplicateId(entry.id.0)));
            }
            // Names are matched without case (tellers type them), so they must differ
            // in more than case.
            if branches
                .values()
                .any(|o| o.name.eq_ignore_ascii_case(&entry.name))
            {
                return Err(located(NetworkFileError::DuplicateName(entry.name)));
            }
            let keys =
                |b: &BranchEntry| b.replicas.iter().map(|r| r.public_key).collect::<Vec<_>>();
            let mine = keys(&entry);
            let repeated = (1..mine.len()).any(|i| mine[..i].contains(&mine[i]));
            if repeated
                || branches
                    .values()
                    .any(|o| keys(o).iter().any(|k| mine.contains(k)))
            {
                return Err(located(NetworkFileError::DuplicateKey(entry.id.0)));
            }
            branches.insert(entry.id, entry);
        }
        Ok(NetworkFile {
            branches,
            fence_lease_ms,
        })
    }

    /// How long a fence claim's grant lets a branch move money (`wire::fence`).
    pub fn fence_lease(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.fence_lease_ms)
    }

    /// How long a witness waits after a copy's last renewal before another may take
    /// over: the lease and half again (clocks that run at different rates, and a
    /// claim's time in flight).
    pub fn fence_grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(wire::limits::fence_grace_ms(self.fence_lease_ms))
    }

    /// A branch by id.
    pub fn get(&self, id: BranchId) -> Option<&BranchEntry> {
        self.branches.get(&id)
    }

    /// A branch by name as tellers type it: `mumbai` finds `Mumbai`.
    pub fn by_name(&self, name: &str) -> Option<&BranchEntry> {
        let name = name.trim();
        self.branches
            .values()
            .find(|b| b.name.eq_ignore_ascii_case(name))
    }

    /// The branch a connected peer is a replica of, if it is one.
    pub fn by_peer(&self, peer: &PeerId) -> Option<&BranchEntry> {
        self.branches
            .values()
            .find(|b| b.replica_by_peer(peer).is_some())
    }

    /// The branch and replica a connected peer is, if it is one.
    pub fn replica_by_peer(&self, peer: &PeerId) -> Option<(&BranchEntry, &ReplicaEntry)> {
        self.branches
            .values()
            .find_map(|b| b.replica_by_peer(peer).map(|r| (b, r)))
    }

    /// Every branch, by id.
    pub fn branches(&self) -> impl Iterator<Item = &BranchEntry> {
        self.branches.values()
    }
}

fn check(b: RawBranch) -> Result<BranchEntry, NetworkFileError> {
    let id = b.id;
    if id == 0 || id > ACCOUNT_BRANCH_MAX {
        return Err(NetworkFileError::IdRange(id));
    }
    if b.name.trim().is_empty()
        || b.name.len() > TEXT_FIELD_BYTES_MAX
        || b.name.chars().any(char::is_control)
    {
        return Err(NetworkFileError::Name(id));
    }
    let own = b.public_key.is_some() || b.peer_id.is_some() || !b.addresses.is_empty();
    let raw = match (own, b.replica.is_empty()) {
        (true, false) => return Err(NetworkFileError::KeyAndReplicas(id)),
        (_, true) => vec![RawReplica {
            id: 1,
            public_key: b.public_key,
            peer_id: b.peer_id,
            addresses: b.addresses,
        }],
        (false, false) => b.replica,
    };
    if raw.len() > REPLICAS_MAX {
        return Err(NetworkFileError::TooManyReplicas(id));
    }
    let mut replicas: Vec<ReplicaEntry> = Vec::with_capacity(raw.len());
    for r in raw {
        let replica = check_replica(id, r)?;
        if replica.id == 0 || replicas.iter().any(|o| o.id == replica.id) {
            return Err(NetworkFileError::ReplicaId(id, replica.id));
        }
        replicas.push(replica);
    }
    replicas.sort_by_key(|r| r.id);
    Ok(BranchEntry {
        id: BranchId(id),
        name: b.name,
        replicas,
    })
}

fn check_replica(id: u16, r: RawReplica) -> Result<ReplicaEntry, NetworkFileError> {
    let from_key = r
        .public_key
        .map(|k| {
            k.parse::<BranchPublicKey>()
                .map_err(|_| NetworkFileError::BadKey(id))
        })
        .transpose()?;
    let from_peer = r
        .peer_id
        .map(|p| {
            let peer: PeerId = p.parse().map_err(|_| NetworkFileError::BadPeerId(id))?;
            BranchPublicKey::from_peer_id(&peer).map_err(|_| NetworkFileError::BadPeerId(id))
        })
        .transpose()?;
    let public_key = match (from_key, from_peer) {
        (Some(k), Some(p)) if k != p => return Err(NetworkFileError::KeyMismatch(id)),
        (Some(k), _) | (None, Some(k)) => k,
        (None, None) => return Err(NetworkFileError::NoKey(id)),
    };
    let peer_id = public_key.peer_id();
    let addresses = r
        .addresses
        .iter()
        .map(|a| {
            let addr: Multiaddr = a
                .parse()
                .map_err(|_| NetworkFileError::BadAddress(id, a.clone()))?;
            match addr.iter().last() {
                Some(Protocol::P2p(p)) if p != peer_id => {
                    Err(NetworkFileError::BadAddress(id, a.clone()))
                }
                _ => Ok(addr),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ReplicaEntry {
        id: r.id,
        public_key,
        peer_id,
        addresses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::BranchKey;

    fn key(seed: u8) -> BranchKey {
        BranchKey::from_secret([seed; 32])
    }

    fn branch(id: u16, name: &str, seed: u8) -> String {
        format!(
            "[[branch]]\nid = {id}\nname = \"{name}\"\npublic_key = \"{}\"\naddresses = [\"/ip4/127.0.0.1/tcp/{}\"]\n",
            key(seed).public(),
            7000 + id
        )
    }

    fn check(text: &str, expected: Result<usize, NetworkFileError>) {
        assert_eq!(
            NetworkFile::parse(text)
                .map(|n| n.branches().count())
                .map_err(|e| e.bare().clone()),
            expected,
            "{text}"
        );
    }

    #[test]
    fn table() {
        let (a, b) = (branch(1, "Mumbai", 1), branch(2, "Pune", 2));
        check(&format!("{a}{b}"), Ok(2));
        check("", Err(NetworkFileError::Empty));
        assert!(matches!(
            NetworkFile::parse("[[branch]\n").map_err(|e| e.bare().clone()),
            Err(NetworkFileError::Toml(_))
        ));
        check(&format!("{a}{a}"), Err(NetworkFileError::DuplicateId(1)));
        check(
            &format!("{a}{}", branch(2, "Mumbai", 2)),
            Err(NetworkFileError::DuplicateName("Mumbai".into())),
        );
        check(
            &format!("{a}{}", branch(2, "Pune", 1)),
            Err(NetworkFileError::DuplicateKey(2)),
        );
        check(&branch(0, "Zero", 3), Err(NetworkFileError::IdRange(0)));
        check(
            &branch(1000, "Big", 3),
            Err(NetworkFileError::IdRange(1000)),
        );
        check(&branch(3, "  ", 3), Err(NetworkFileError::Name(3)));
        check(
            "[[branch]]\nid = 4\nname = \"NoKey\"\n",
            Err(NetworkFileError::NoKey(4)),
        );
        check(
            "[[branch]]\nid = 4\nname = \"K\"\npublic_key = \"zz\"\n",
            Err(NetworkFileError::BadKey(4)),
        );
        check(
            "[[branch]]\nid = 4\nname = \"K\"\npeer_id = \"nope\"\n",
            Err(NetworkFileError::BadPeerId(4)),
        );
        let mismatch = format!(
            "[[branch]]\nid = 5\nname = \"M\"\npublic_key = \"{}\"\npeer_id = \"{}\"\n",
            key(5).public(),
            key(6).peer_id()
        );
        check(&mismatch, Err(NetworkFileError::KeyMismatch(5)));
        let bad_addr = format!(
            "[[branch]]\nid = 6\nname = \"A\"\npublic_key = \"{}\"\naddresses = [\"not an address\"]\n",
            key(6).public()
        );
        check(
            &bad_addr,
            Err(NetworkFileError::BadAddress(6, "not an address".into())),
        );
        let other_peer = format!("/ip4/127.0.0.1/tcp/1/p2p/{}", key(9).peer_id());
        let wrong_p2p = format!(
            "[[branch]]\nid = 7\nname = \"P\"\npublic_key = \"{}\"\naddresses = [\"{other_peer}\"]\n",
            key(7).public()
        );
        check(&wrong_p2p, Err(NetworkFileError::BadAddress(7, other_peer)));
        let unknown = NetworkFile::parse(&format!("{a}color = \"red\"\n"));
        assert!(
            matches!(unknown.as_ref().map_err(|e| e.bare()), Err(NetworkFileError::Toml(m)) if m.contains("color")),
            "{unknown:?}"
        );
    }

    #[test]
    fn errors_say_where_and_names_match_without_case() {
        let (a, b) = (branch(1, "Mumbai", 1), branch(2, "Pune", 2));
        let net = NetworkFile::parse(&format!("{a}{b}")).expect("parses");
        assert_eq!(net.by_name("mumbai").map(|b| b.id), Some(BranchId(1)));
        assert_eq!(net.by_name(" PUNE ").map(|b| b.id), Some(BranchId(2)));
        assert!(net.by_name("Delhi").is_none());
        // The second branch starts on line 6; a name that differs only in case is a
        // name listed twice.
        let twice = NetworkFile::parse(&format!("{a}{}", branch(2, "MUMBAI", 2)));
        let e = twice.expect_err("refused").to_string();
        assert!(
            e.starts_with("line 6, column 1: branch name \"MUMBAI\""),
            "{e}"
        );
        // A TOML error: the line and column of the bad value.
        let bad = format!("{a}[[branch]]\nid = \"two\"\n");
        let e = NetworkFile::parse(&bad).expect_err("refused").to_string();
        assert!(e.starts_with("line 7, column 6: "), "{e}");
    }

    fn replica(id: u64, seed: u8) -> String {
        format!(
            "[[branch.replica]]\nid = {id}\npublic_key = \"{}\"\naddresses = [\"/ip4/127.0.0.1/tcp/{}\"]\n",
            key(seed).public(),
            7100 + u16::from(seed)
        )
    }

    #[test]
    fn a_branch_lists_its_replicas_each_with_its_own_key() {
        let head = "[[branch]]\nid = 2\nname = \"Pune\"\n";
        let three = format!(
            "{head}{}{}{}",
            replica(1, 11),
            replica(2, 12),
            replica(3, 13)
        );
        let n = NetworkFile::parse(&format!("{}{three}", branch(1, "Mumbai", 1))).expect("valid");
        let pune = n.by_name("Pune").expect("listed");
        assert!(pune.is_replicated());
        assert_eq!(
            pune.replicas.iter().map(|r| r.id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let (b, r) = n.replica_by_peer(&key(12).peer_id()).expect("a replica");
        assert_eq!((b.id, r.id), (BranchId(2), 2));
        assert!(!n.by_name("Mumbai").expect("listed").is_replicated());
        check(
            &format!("{head}{}{}", replica(1, 11), replica(1, 12)),
            Err(NetworkFileError::ReplicaId(2, 1)),
        );
        check(
            &format!("{head}{}", replica(0, 11)),
            Err(NetworkFileError::ReplicaId(2, 0)),
        );
        check(
            &format!("{head}{}{}", replica(1, 11), replica(2, 11)),
            Err(NetworkFileError::DuplicateKey(2)),
        );
        check(
            &format!("{}{head}{}", branch(1, "Mumbai", 1), replica(1, 1)),
            Err(NetworkFileError::DuplicateKey(2)),
        );
        let own_key = format!(
            "[[branch]]\nid = 2\nname = \"Pune\"\npublic_key = \"{}\"\n{}",
            key(14).public(),
            replica(1, 11)
        );
        check(&own_key, Err(NetworkFileError::KeyAndReplicas(2)));
        let eight: String = (1..=8u8).map(|i| replica(u64::from(i), 20 + i)).collect();
        check(
            &format!("{head}{eight}"),
            Err(NetworkFileError::TooManyReplicas(2)),
        );
    }

    #[test]
    fn peer_id_alone_pins_the_key_and_lookups_work() {
        let text = format!(
            "[[branch]]\nid = 9\nname = \"Goa\"\npeer_id = \"{}\"\n",
            key(9).peer_id()
        );
        let n = NetworkFile::parse(&text).expect("valid");
        let goa = n.by_name("Goa").expect("listed");
        assert_eq!(goa.first().public_key, key(9).public());
        assert_eq!(
            n.by_peer(&key(9).peer_id()).map(|b| b.id),
            Some(BranchId(9))
        );
        assert_eq!(n.get(BranchId(9)).map(|b| b.name.as_str()), Some("Goa"));
        assert!(n.by_peer(&key(1).peer_id()).is_none());
    }
}
