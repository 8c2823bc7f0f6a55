//! Operators: tokens stored hashed, expiry, revocation by name.

use super::*;
use crate::auth::{Role, Selector};

#[test]
fn tokens_are_stored_hashed_and_revocation_is_by_name() {
    for (_guard, s) in stores() {
        let web = Selector::parse("tag:web").unwrap();
        let op = NewOperator {
            name: "alice",
            role: Role::Operator,
            hosts: &web,
            expires_ms: Some(5_000),
        };
        let token = s.add_operator(&op, 1_000).unwrap();
        assert!(token.starts_with("cco_") && token.len() == 68, "{token}");
        let again = s.add_operator(&op, 1_000).unwrap_err();
        assert_eq!(StoreError::classify(&again), ErrorKind::Conflict);
        let found = s
            .operator_by_token_hash(&hash_key(&token))
            .unwrap()
            .unwrap();
        assert_eq!(
            (found.role.as_str(), found.hosts.as_str()),
            ("operator", "tag:web")
        );
        assert!(s.operator_by_token_hash(&token).unwrap().is_none());
        let live = s.live_operators().unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].0, hash_key(&token));
        assert!(s.operator_live("alice", 4_999).unwrap());
        assert!(!s.operator_live("alice", 5_000).unwrap(), "expired");
        s.revoke_operator("alice", 2_000).unwrap();
        assert!(!s.operator_live("alice", 1_500).unwrap(), "revoked");
        assert!(
            s.operator_by_token_hash(&hash_key(&token))
                .unwrap()
                .is_none()
        );
        assert!(s.live_operators().unwrap().is_empty());
        let gone = s.revoke_operator("alice", 3_000).unwrap_err();
        assert_eq!(StoreError::classify(&gone), ErrorKind::NotFound);
        assert_eq!(s.list_operators().unwrap()[0].revoked_ms, Some(2_000));
    }
}
