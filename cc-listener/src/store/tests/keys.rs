//! API keys.

use super::*;

#[test]
fn keys_are_stored_hashed_bound_once_and_revocable() {
    for (_guard, s) in stores() {
        let key = s.add_key("web1", None, 1).unwrap();
        assert!(key.starts_with("cck_") && key.len() == 68);
        let rec = s.authenticate(&key).unwrap().unwrap();
        assert_eq!(rec.name, "web1");
        assert!(s.authenticate("cck_wrong").unwrap().is_none());
        let tags = |t: &[&str]| t.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
        // The first registration binds hostname and tags (in any order,
        // each once); the same again is fine.
        let web = tags(&["role=web", "dc=1", "role=web"]);
        assert_eq!(
            s.bind_key(rec.id, &h("web1.example"), &web).unwrap(),
            Binding::Ok
        );
        let same = tags(&["dc=1", "role=web"]);
        assert_eq!(
            s.bind_key(rec.id, &h("web1.example"), &same).unwrap(),
            Binding::Ok
        );
        assert_eq!(
            s.bind_key(rec.id, &h("db1.example"), &same).unwrap(),
            Binding::OtherHost("web1.example".into())
        );
        // Other tags, fewer or more, are not the key's.
        for claim in [
            tags(&["dc=1"]),
            tags(&["dc=1", "role=web", "role=db"]),
            vec![],
        ] {
            assert_eq!(
                s.bind_key(rec.id, &h("web1.example"), &claim).unwrap(),
                Binding::OtherTags(same.clone()),
                "{claim:?}"
            );
        }
        // Until an operator changes them.
        assert_eq!(
            s.retag_key("web1", &tags(&["role=db"])).unwrap(),
            tags(&["role=db"])
        );
        assert_eq!(
            s.bind_key(rec.id, &h("web1.example"), &tags(&["role=db"]))
                .unwrap(),
            Binding::Ok
        );
        assert_eq!(
            s.list_keys().unwrap()[0].tags.as_deref(),
            Some(tags(&["role=db"]).as_slice())
        );
        let nobody = s.retag_key("nobody", &[]).unwrap_err();
        assert_eq!(StoreError::classify(&nobody), ErrorKind::NotFound);
        let other = s.add_key("other", None, 1).unwrap();
        let other = s.authenticate(&other).unwrap().unwrap();
        assert_eq!(
            s.bind_key(other.id, &h("web1.example"), &[]).unwrap(),
            Binding::HostnameTaken
        );
        // Tags given with the key are the ones its host must have.
        let tagged = s
            .add_key_tagged("tagged", None, Some(&tags(&["b", "a"])), 1)
            .unwrap();
        let tagged = s.authenticate(&tagged).unwrap().unwrap();
        assert_eq!(
            s.bind_key(tagged.id, &h("t.example"), &tags(&["a"]))
                .unwrap(),
            Binding::OtherTags(tags(&["a", "b"]))
        );
        let refused = s.list_keys().unwrap();
        let refused = refused.iter().find(|k| k.name == "tagged").unwrap();
        assert_eq!(
            refused.hostname, None,
            "a refused registration binds nothing"
        );
        s.revoke_key("web1", 2).unwrap();
        assert!(s.authenticate(&key).unwrap().is_none());
        let revoked = s.retag_key("web1", &[]).unwrap_err();
        assert_eq!(StoreError::classify(&revoked), ErrorKind::NotFound);
        let again = s.revoke_key("web1", 3).unwrap_err();
        assert_eq!(StoreError::classify(&again), ErrorKind::NotFound);
        assert!(s.add_key("web1", None, 4).is_err(), "names are unique");
    }
}
