//! The raft configuration a member list describes (raft's view of the state machine's members).

use keel_raft::ConfState;
use keel_rpc::etcd::PbMember;

/// The raft membership a member list describes.
pub fn conf_state(members: &[PbMember]) -> ConfState {
    let (learners, voters): (Vec<&PbMember>, Vec<&PbMember>) =
        members.iter().partition(|m| m.is_learner);
    ConfState {
        voters: voters.iter().map(|m| m.id).collect(),
        learners: learners.iter().map(|m| m.id).collect(),
        ..Default::default()
    }
}
