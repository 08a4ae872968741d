//! The JSON request and response types of the HTTP API (`/v1/...`), shared
//! by the server and [`crate::client::Client`]. Requests refuse unknown
//! fields so a typo is an error, not a silently ignored option.

use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::keys::PublicKey;
use crate::model::{Appliance, MacAddr, ReportedCapacity, Resources};
use crate::ticket;

/// Every error reply: `{"error": {...}}` with a non-2xx status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The error.
    pub error: ErrorDetail,
}

/// A typed error: a stable code for scripts and a message for people that says what to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `placement_failed`, `replayed_request`.
    pub code: String,
    /// What failed, with what input, and what to do next.
    pub message: String,
    /// Structured details (e.g. the failed placement constraint and what is available).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// `GET /v1/authority`: who this authority is and its lease policy (no authentication).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorityInfo {
    /// The key that signs tickets; nodes pin it.
    pub public_key: PublicKey,
    /// Software version.
    pub version: String,
    /// The authority's clock (unix seconds).
    pub now: i64,
    /// Lease policy.
    pub policy: LeasePolicy,
}

/// Lease policy from the authority's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeasePolicy {
    /// Lease given when a request names none.
    pub default_lease_secs: u64,
    /// Longest lease granted by create or renew.
    pub max_lease_secs: u64,
}

/// `GET /v1/whoami`: the authenticated caller.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WhoAmI {
    /// A person or service.
    Principal(Principal),
    /// A node.
    Node {
        /// Node name.
        name: String,
    },
}

/// `POST /v1/sites`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSite {
    /// Site name (PlanetLab login base, e.g. "ams").
    pub name: String,
    /// Region used by placement (e.g. "eu").
    pub region: String,
    /// ISO country code (e.g. "NL").
    pub country: String,
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
    /// Free text.
    #[serde(default)]
    pub description: String,
}

/// A site.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Site {
    /// Name.
    pub name: String,
    /// Region.
    pub region: String,
    /// Country code.
    pub country: String,
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
    /// Free text.
    pub description: String,
    /// Number of nodes at the site.
    pub nodes: u32,
}

/// `POST /v1/nodes`: add a node to the registry (admin or the site's PI).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    /// Node name (DNS-like).
    pub name: String,
    /// Site it stands at.
    pub site: String,
    /// Its ed25519 identity key (the same key as its libp2p identity).
    pub public_key: PublicKey,
    /// What it offers to slivers.
    pub capacity: Resources,
}

/// A node's state as placement sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Registered by an operator, never heard from; placement may use it.
    New,
    /// Heard from within the liveness window.
    Up,
    /// Not heard from within the liveness window; placement avoids it.
    Down,
    /// Taken out of service by an operator; placement avoids it.
    Disabled,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::New => "new",
            NodeState::Up => "up",
            NodeState::Down => "down",
            NodeState::Disabled => "disabled",
        })
    }
}

/// A node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// Name.
    pub name: String,
    /// Site.
    pub site: String,
    /// Site's region.
    pub region: String,
    /// Site's country.
    pub country: String,
    /// Identity key.
    pub public_key: PublicKey,
    /// Capacity the operator configured (`slicenet node add`): a ceiling.
    pub capacity: Resources,
    /// Capacity the node reported at its last registration or heartbeat that carried one.
    #[serde(default)]
    pub reported_capacity: Option<ReportedCapacity>,
    /// When that report arrived (unix seconds).
    #[serde(default)]
    pub capacity_reported_at: Option<i64>,
    /// Sum of the reservations of its slivers.
    pub allocated: Resources,
    /// Number of slivers.
    pub slivers: u32,
    /// State.
    pub state: NodeState,
    /// WireGuard public key, once the node registered.
    pub wg_public_key: Option<PublicKey>,
    /// Overlay tunnel address, once the node registered.
    pub tunnel_address: Option<Ipv4Addr>,
    /// Underlay UDP endpoint, once the node registered one.
    pub endpoint: Option<SocketAddr>,
    /// Last registration or heartbeat (unix seconds).
    pub last_seen: Option<i64>,
    /// Where clients connect for sliver consoles, once the node registered one.
    #[serde(default)]
    pub console: Option<SocketAddr>,
}

impl Node {
    /// What placement may fill: the configured capacity lowered to the
    /// reported one in every dimension the node reported.
    pub fn usable_capacity(&self) -> Resources {
        match &self.reported_capacity {
            Some(r) => r.cap(&self.capacity),
            None => self.capacity,
        }
    }

    /// The dimensions in which slivers already hold more than the usable
    /// capacity (the node reported less than was allocated): nothing new is
    /// placed there, and nothing is revoked automatically.
    pub fn overcommitted(&self) -> Vec<&'static str> {
        let usable = self.usable_capacity();
        let a = &self.allocated;
        [
            ("vcpus", a.vcpus as u64 > usable.vcpus as u64),
            ("memory", a.memory_mib > usable.memory_mib),
            ("disk", a.disk_gib > usable.disk_gib),
            ("bandwidth", a.bandwidth_mbps > usable.bandwidth_mbps),
        ]
        .into_iter()
        .filter(|(_, over)| *over)
        .map(|(name, _)| name)
        .collect()
    }
}

/// `POST /v1/nodes/{name}/state` (admin or the site's PI).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetNodeState {
    /// False takes the node out of placement (existing slivers stay).
    pub enabled: bool,
}

/// `POST /v1/nodes/{name}/register`, signed with the node's own identity key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    /// The node's WireGuard (x25519) public key, base64 as `wg pubkey` prints it.
    pub wg_public_key: PublicKey,
    /// The UDP endpoint other nodes reach its WireGuard socket at.
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
    /// A tunnel address the node insists on; by default the authority assigns one from its pool and keeps it stable.
    #[serde(default)]
    pub tunnel_address: Option<Ipv4Addr>,
    /// Software version, for operators.
    #[serde(default)]
    pub software: Option<String>,
    /// What the host really has for slivers; placement never goes beyond
    /// it (nor beyond the operator's figure). `None`: not measured, the
    /// operator's figure stands (and a report made earlier is forgotten).
    // Omitted when absent, so an older authority (which refuses unknown fields) still accepts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ReportedCapacity>,
    /// The TCP address clients connect to for sliver consoles (given back
    /// in console grants); `None`: this node offers no remote console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<SocketAddr>,
}

/// Reply to a registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRegistered {
    /// The node as registered.
    pub node: Node,
    /// The key that signs its tickets.
    pub authority_key: PublicKey,
    /// Highest ticket epoch for this node now.
    pub epoch: u64,
}

/// State of a sliver on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SliverState {
    /// Placed; the node has not reported it yet.
    Allocated,
    /// The node is creating it.
    Provisioning,
    /// Running.
    Running,
    /// Stopped by the node (e.g. at expiry).
    Stopped,
    /// Failed; see the message.
    Failed,
}

impl std::fmt::Display for SliverState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SliverState::Allocated => "allocated",
            SliverState::Provisioning => "provisioning",
            SliverState::Running => "running",
            SliverState::Stopped => "stopped",
            SliverState::Failed => "failed",
        })
    }
}

/// `POST /v1/nodes/{name}/heartbeat`, signed with the node's identity key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The state of each sliver the node runs.
    #[serde(default)]
    pub slivers: Vec<SliverReport>,
    /// The host's capacity when it changed since registration (or the
    /// registration could not carry it); `None` keeps the last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<ReportedCapacity>,
}

/// One sliver's state, reported by its node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliverReport {
    /// Sliver id.
    pub sliver_id: u64,
    /// State.
    pub state: SliverState,
    /// Detail (e.g. why it failed).
    #[serde(default)]
    pub message: Option<String>,
}

/// Reply to a heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// Highest ticket epoch for this node: poll tickets when it is above what the node holds.
    pub epoch: u64,
    /// Reported slivers the authority does not know on this node: stop them.
    pub unknown_slivers: Vec<u64>,
}

/// `GET /v1/nodes/{name}/tickets?after_epoch=N&wait_secs=S`: tickets with an epoch above N.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TicketBatch {
    /// Highest epoch among this node's tickets (echoes N when nothing is newer).
    pub epoch: u64,
    /// Newer tickets (active and revoked), oldest first.
    pub tickets: Vec<SignedTicket>,
}

/// One signed ticket as delivered.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedTicket {
    /// Sliver id (also inside the signed bytes).
    pub sliver_id: u64,
    /// Epoch (also inside the signed bytes).
    pub epoch: u64,
    /// The canonical signed bytes, base64: verify with [`crate::ticket::verify`].
    pub ticket: String,
}

impl SignedTicket {
    /// The signed bytes (verify them before trusting anything).
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(&self.ticket)
    }
}

/// Reply of `POST /v1/slices/{slice}/slivers/{id}/console`: a console
/// grant and where to present it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsoleGrantReply {
    /// The signed grant, base64 (canonical bytes, see [`crate::grant`]).
    pub grant: String,
    /// The grant's id in hex, as the audit log records it.
    pub grant_id: String,
    /// The sliver.
    pub sliver_id: u64,
    /// Its slice.
    pub slice: String,
    /// The node that runs it.
    pub node: String,
    /// That node's identity key: the node proves it holds it in the handshake.
    pub node_key: PublicKey,
    /// The node's console address: connect there and run [`crate::grant::handshake`].
    pub console: SocketAddr,
    /// Unix seconds from which the node refuses the grant.
    pub expires_at: i64,
}

impl ConsoleGrantReply {
    /// The signed grant bytes.
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(&self.grant)
    }
}

/// A principal's role at a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Principal investigator: creates slices named after the site, manages its nodes and users.
    Pi,
    /// A user: works in the slices they are a member of.
    User,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Pi => "pi",
            Role::User => "user",
        })
    }
}

/// A membership of a principal at a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteRole {
    /// Site name.
    pub site: String,
    /// Role there.
    pub role: Role,
}

/// `POST /v1/principals` (admin; a site's PI may add users at that site).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPrincipal {
    /// User name.
    pub name: String,
    /// Their ed25519 public key.
    pub public_key: PublicKey,
    /// Authority-wide administrator.
    #[serde(default)]
    pub admin: bool,
    /// Site memberships.
    #[serde(default)]
    pub sites: Vec<SiteRole>,
}

/// A principal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Principal {
    /// Name.
    pub name: String,
    /// Public key.
    pub public_key: PublicKey,
    /// Administrator.
    pub admin: bool,
    /// Site memberships.
    pub sites: Vec<SiteRole>,
}

/// Keep slivers of one request apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AntiAffinity {
    /// Slivers may share nodes.
    #[default]
    None,
    /// No two slivers of the slice on one node.
    Node,
    /// No two slivers of the request at one site.
    Site,
}

/// Where to put slivers: groups of slivers, each with a count and location filters.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementRequest {
    /// The groups; all of them are satisfied, or nothing is allocated.
    pub groups: Vec<PlacementGroup>,
    /// Reservation of each sliver unless a group says otherwise (default 1 vCPU, 256 MiB, 1 GiB, 10 Mbit/s).
    #[serde(default)]
    pub resources: Option<Resources>,
    /// Keep slivers apart.
    #[serde(default)]
    pub anti_affinity: AntiAffinity,
    /// Appliance of every sliver (default: the node's "default").
    #[serde(default)]
    pub appliance: Option<Appliance>,
}

/// `count` slivers on nodes that pass every filter given (an empty filter passes all).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementGroup {
    /// How many slivers.
    pub count: u32,
    /// Only these nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
    /// Only these sites.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<String>,
    /// Only these regions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<String>,
    /// Only these countries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<String>,
    /// Only sites within a radius of a point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub near: Option<Near>,
    /// Reservation of each sliver of this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

/// A circle on the map.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Near {
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
    /// Radius in km.
    pub radius_km: f64,
}

/// `POST /v1/slices`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSlice {
    /// `<site>_<name>`.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Requested lease; the reply states what was granted.
    #[serde(default)]
    pub lease_secs: Option<u64>,
    /// Other principals who may work in the slice.
    #[serde(default)]
    pub members: Vec<String>,
    /// Slivers to allocate with the slice (all or nothing).
    #[serde(default)]
    pub placement: Option<PlacementRequest>,
    /// Only compute and return the placement; change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `POST /v1/slices/{name}/slivers`: add slivers to a live slice.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddSlivers {
    /// Where and what.
    pub placement: PlacementRequest,
    /// Only compute and return the placement.
    #[serde(default)]
    pub dry_run: bool,
}

/// A sliver placed (or, in a dry run, that would be placed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedSliver {
    /// Node.
    pub node: String,
    /// Its site.
    pub site: String,
    /// Its region.
    pub region: String,
    /// Its country.
    pub country: String,
    /// Reservation.
    pub resources: Resources,
    /// Index of the placement group it satisfies.
    pub group: usize,
}

/// Reply to slice creation or sliver addition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlacementReply {
    /// True when nothing was changed.
    pub dry_run: bool,
    /// The placement made (or that would be made).
    pub placement: Vec<PlannedSliver>,
    /// The slice after the change (absent in a dry run).
    pub slice: Option<Slice>,
    /// Lease granted (unix seconds), with a note when it was capped.
    pub lease_expires_at: Option<i64>,
    /// Human note about the lease (e.g. capped by policy).
    #[serde(default)]
    pub note: Option<String>,
}

/// A slice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slice {
    /// Name.
    pub name: String,
    /// Site prefix.
    pub site: String,
    /// Owner.
    pub owner: String,
    /// Description.
    pub description: String,
    /// Members (owner included).
    pub members: Vec<String>,
    /// Created (unix seconds).
    pub created_at: i64,
    /// Lease end (unix seconds): everything is reclaimed then.
    pub lease_expires_at: i64,
    /// Slivers.
    pub slivers: Vec<Sliver>,
    /// Enclaves owned by the slice.
    pub enclaves: Vec<String>,
}

/// A slice in a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SliceSummary {
    /// Name.
    pub name: String,
    /// Owner.
    pub owner: String,
    /// Lease end.
    pub lease_expires_at: i64,
    /// Number of slivers.
    pub slivers: u32,
    /// Description.
    pub description: String,
}

/// A sliver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sliver {
    /// Id (unique forever).
    pub id: u64,
    /// Slice.
    pub slice: String,
    /// Node.
    pub node: String,
    /// Node's site.
    pub site: String,
    /// Reservation.
    pub resources: Resources,
    /// Appliance.
    pub appliance: Appliance,
    /// State reported by the node.
    pub state: SliverState,
    /// Detail from the node.
    pub state_message: Option<String>,
    /// Epoch of its current ticket.
    pub ticket_epoch: u64,
}

/// `POST /v1/slices/{name}/renew`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// New lease, counted from now.
    pub lease_secs: u64,
}

/// Reply to a renewal: exactly what was granted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewReply {
    /// Expiry asked for (unix seconds).
    pub requested_expires_at: i64,
    /// Expiry granted (unix seconds).
    pub granted_expires_at: i64,
    /// True when policy cut the request short.
    pub capped: bool,
    /// The policy maximum.
    pub max_lease_secs: u64,
    /// A sentence for people.
    pub message: String,
}

/// `POST /v1/slices/{name}/members`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberChange {
    /// Principals to add.
    #[serde(default)]
    pub add: Vec<String>,
    /// Principals to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `POST /v1/slices/{slice}/enclaves`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEnclave {
    /// Name, unique within the slice.
    pub name: String,
    /// Initial member slivers (of this slice or of slices the caller works in).
    #[serde(default)]
    pub slivers: Vec<u64>,
    /// Guest subnet like "198.19.7.0/24"; by default the next free /24 of the pool.
    #[serde(default)]
    pub subnet: Option<String>,
}

/// `POST /v1/slices/{slice}/enclaves/{enclave}/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddEnclaveMember {
    /// The sliver to join.
    pub sliver_id: u64,
}

/// `POST /v1/slices/{slice}/enclaves/{enclave}/gateways`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewGateway {
    /// Name, unique within the enclave.
    pub name: String,
    /// The gateway host's WireGuard public key.
    pub wg_public_key: PublicKey,
    /// Its UDP endpoint, when fixed (otherwise nodes learn it when it connects).
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
}

/// An enclave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Enclave {
    /// Name.
    pub name: String,
    /// Owning slice.
    pub slice: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Guest subnet, e.g. "198.19.1.0/24".
    pub subnet: String,
    /// Member slivers.
    pub members: Vec<EnclaveMember>,
    /// Gateways.
    pub gateways: Vec<ticket::Gateway>,
}

/// A member sliver of an enclave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnclaveMember {
    /// Sliver id.
    pub sliver_id: u64,
    /// Its slice.
    pub slice: String,
    /// Its node.
    pub node: String,
    /// Its MAC on the enclave.
    pub mac: MacAddr,
    /// Its address on the enclave.
    pub address: Ipv4Addr,
}

/// `GET /v1/slices/{slice}/enclaves/{enclave}/export[?gateway=NAME]`: what a gateway host needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnclaveExport {
    /// Enclave name.
    pub enclave: String,
    /// Owning slice.
    pub slice: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Guest subnet.
    pub subnet: Ipv4Addr,
    /// Its prefix length.
    pub prefix_len: u8,
    /// The gateway this export is for, when one was named: its tunnel address, enclave address and MAC.
    pub gateway: Option<ticket::Gateway>,
    /// Nodes hosting members: the gateway's WireGuard peers.
    pub peers: Vec<ticket::Peer>,
    /// Member slivers.
    pub members: Vec<ticket::Member>,
    /// All gateways of the enclave.
    pub gateways: Vec<ticket::Gateway>,
    /// The authority key that signs the nodes' tickets.
    pub authority_key: PublicKey,
}

/// An audit log entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Sequence number.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// Who (principal or node name, or "authority" for expiry).
    pub actor: String,
    /// What, e.g. "slice.create".
    pub action: String,
    /// On what.
    pub target: String,
    /// Request details (JSON).
    pub detail: serde_json::Value,
}

/// Reply of a mutation that returns nothing else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    /// A sentence for people.
    pub message: String,
}
