use super::merkle::{diff_entries, differing, ZERO};
use super::*;
use agentmesh_protocol::pattern::{Content, Edit};
use agentmesh_protocol::NodeId;

fn store() -> (tempfile::TempDir, PatternStore) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path()).open().unwrap();
    (dir, PatternStore::open(&db).unwrap())
}

fn pattern(id: &str, kind: &str, tags: &[&str]) -> Pattern {
    let edit = Edit {
        content: Content {
            kind: kind.into(),
            name: format!("name of {id}"),
            description: String::new(),
            framework: None,
            language: None,
            author_agent: "agent".into(),
            body: "null".into(),
            metadata: "{}".into(),
        },
        tags: tags.iter().map(|t| t.to_string()).collect(),
    };
    Pattern::create(id.into(), edit, NodeId([7; 32]), 1).unwrap()
}

fn all(filter: Filter) -> Filter {
    Filter {
        limit: 1000,
        ..filter
    }
}

#[test]
fn listings_by_tag_and_kind_follow_updates() {
    let (_dir, s) = store();
    s.apply(&[
        pattern("a", "fix", &["rust", "io"]),
        pattern("b", "fix", &["go"]),
        pattern("c", "template", &["rust"]),
    ])
    .unwrap();
    let ids =
        |f: Filter| -> Vec<String> { s.list(&all(f)).unwrap().into_iter().map(|p| p.id).collect() };
    let tag = |t: &str| Filter {
        tag: Some(t.into()),
        ..Filter::default()
    };
    assert_eq!(ids(tag("rust")), vec!["a", "c"]);
    assert_eq!(
        ids(Filter {
            kind: Some("fix".into()),
            ..Filter::default()
        }),
        vec!["a", "b"]
    );
    assert_eq!(
        ids(Filter {
            tag: Some("rust".into()),
            kind: Some("fix".into()),
            ..Filter::default()
        }),
        vec!["a"]
    );
    // Unfiltered listings page through everything, in storage order.
    let everything = ids(Filter::default());
    assert_eq!(everything.len(), 3);
    let rest = ids(Filter {
        after: Some(everything[0].clone()),
        ..Filter::default()
    });
    assert_eq!(rest, everything[1..]);
    // Retagging and a kind change move the pattern between index entries.
    s.edit("a", |old| {
        let mut p = old.unwrap();
        let mut edit = Edit {
            content: p.content.value.clone(),
            tags: vec!["go".into()],
        };
        edit.content.kind = "template".into();
        p.update(edit, NodeId([7; 32]), 2)?;
        Ok(p)
    })
    .unwrap();
    assert_eq!(ids(tag("rust")), vec!["c"]);
    assert_eq!(ids(tag("go")), vec!["a", "b"]);
    assert_eq!(
        ids(Filter {
            kind: Some("fix".into()),
            ..Filter::default()
        }),
        vec!["b"]
    );
    assert_eq!(s.count(), 3);
}

#[test]
fn applying_a_state_twice_changes_nothing() {
    let (_dir, s) = store();
    let p = pattern("a", "fix", &[]);
    assert_eq!(
        s.apply(std::slice::from_ref(&p)).unwrap(),
        Applied {
            changed: 1,
            unchanged: 0,
            refused: vec![]
        }
    );
    let root = s.root().unwrap();
    assert_eq!(
        s.apply(&[p]).unwrap(),
        Applied {
            changed: 0,
            unchanged: 1,
            refused: vec![]
        }
    );
    assert_eq!(s.root().unwrap(), root);
    assert_eq!(s.count(), 1);
}

#[test]
fn equal_sets_have_equal_hashes_whatever_the_order() {
    let (_d1, a) = store();
    let (_d2, b) = store();
    assert_eq!(a.root().unwrap(), ZERO);
    let ps: Vec<Pattern> = (0..300)
        .map(|i| pattern(&format!("p{i}"), "k", &[]))
        .collect();
    a.apply(&ps).unwrap();
    for p in ps.iter().rev() {
        b.apply(std::slice::from_ref(p)).unwrap();
    }
    assert_eq!(a.root().unwrap(), b.root().unwrap());
    assert_ne!(a.root().unwrap(), ZERO);
    // One changed pattern: one page, one bucket, one entry differ.
    b.edit("p7", |old| {
        let mut p = old.unwrap();
        p.record_outcome(NodeId([9; 32]), true);
        Ok(p)
    })
    .unwrap();
    let pages = differing(&a.pages().unwrap(), &b.pages().unwrap());
    assert_eq!(pages.len(), 1);
    let page = pages[0] as u8;
    let buckets = differing(&a.buckets(page).unwrap(), &b.buckets(page).unwrap());
    assert_eq!(buckets.len(), 1);
    let bucket = (page as u16) << 8 | buckets[0] as u16;
    let (mine, _) = a.entries_page(&[bucket], None, 100, 1 << 20).unwrap();
    let (theirs, _) = b.entries_page(&[bucket], None, 100, 1 << 20).unwrap();
    let diff = diff_entries(&mine, &theirs);
    assert_eq!(diff.differing, vec!["p7".to_string()]);
    assert!(diff.missing.is_empty() && diff.extra.is_empty());
}

#[test]
fn entries_come_in_pages_that_resume_after_the_last_one() {
    let (_dir, s) = store();
    let ps: Vec<Pattern> = (0..2000)
        .map(|i| pattern(&format!("p{i}"), "k", &[]))
        .collect();
    s.apply(&ps).unwrap();
    let buckets: Vec<u16> = (0..=u16::MAX).collect();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let (page, complete) = s
            .entries_page(&buckets, after.as_deref(), 300, 8 * 1024)
            .unwrap();
        assert!(
            page.len() <= 300
                && page.iter().map(|(id, _)| id.len() + 34).sum::<usize>() <= 8 * 1024
        );
        seen.extend(page.iter().map(|(id, _)| entry_key(id)));
        if complete {
            break;
        }
        after = page.last().map(|(id, _)| id.clone());
    }
    // Every entry once, in key order.
    assert_eq!(seen.len(), 2000);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn a_join_past_the_limits_is_refused_and_the_stored_state_kept() {
    let (_dir, s) = store();
    let base = pattern("a", "fix", &[]);
    s.apply(std::slice::from_ref(&base)).unwrap();
    // Nine replicas each add 32 tags of their own: 288 tags, over the 256
    // a state may hold.
    let mut refused = 0;
    for r in 0..9u8 {
        let mut p = base.clone();
        let tags: Vec<String> = (0..32).map(|t| format!("r{r}-t{t}")).collect();
        let edit = Edit {
            content: p.content.value.clone(),
            tags,
        };
        p.update(edit, NodeId([r; 32]), 10).unwrap();
        refused += s.apply(&[p]).unwrap().refused.len();
    }
    assert_eq!(refused, 1);
    let stored = s.get("a").unwrap().unwrap();
    assert!(stored.tags.len() <= agentmesh_protocol::pattern::MAX_TAGS);
    stored.validate().unwrap();
}

#[test]
fn a_lost_digest_entry_is_repaired_by_the_next_merge() {
    let (_dir, s) = store();
    let p = pattern("a", "fix", &["t"]);
    s.apply(std::slice::from_ref(&p)).unwrap();
    let root = s.root().unwrap();
    // As if the node crashed between writing the state and its entry.
    s.inner.entries.remove(entry_key("a")).unwrap();
    s.inner.by_tag.clear().unwrap();
    s.lock().invalidate(bucket_of("a"));
    assert_ne!(s.root().unwrap(), root);
    s.apply(&[p]).unwrap();
    assert_eq!(s.root().unwrap(), root);
    assert_eq!(
        s.list(&all(Filter {
            tag: Some("t".into()),
            ..Filter::default()
        }))
        .unwrap()
        .len(),
        1
    );
}

#[test]
fn a_local_write_that_would_break_a_limit_is_refused_and_nothing_written() {
    use agentmesh_protocol::pattern::MAX_COUNT;
    let (_dir, s) = store();
    let me = NodeId([7; 32]);
    // A peer's state that pushes this node's own use count to the edge (a
    // valid state: every count is below the limit).
    let mut pushed = pattern("a", "fix", &["t"]);
    pushed.uses.increment(me, MAX_COUNT - 2);
    s.apply(std::slice::from_ref(&pushed)).unwrap();
    let outcome = |s: &PatternStore| {
        s.edit("a", |old| {
            let mut p = old.expect("stored");
            p.record_outcome(me, true);
            Ok(p)
        })
    };
    outcome(&s).expect("one more use fits");
    let before = s.get_raw("a").unwrap();
    match outcome(&s) {
        Err(EditError::Invalid(e)) => assert!(e.to_string().contains("counts"), "{e}"),
        other => panic!("a write past the limit was not refused: {other:?}"),
    }
    assert_eq!(s.get_raw("a").unwrap(), before, "nothing written");
    assert_eq!(s.list(&all(Filter::default())).unwrap().len(), 1);
    assert_eq!(s.corrupt_skipped(), 0);
}

#[test]
fn a_damaged_record_is_skipped_by_listings_and_replaced_by_a_peer_state() {
    let (_dir, s) = store();
    s.apply(&[pattern("a", "fix", &["t"]), pattern("b", "fix", &["t"])])
        .unwrap();
    s.inner
        .patterns
        .insert(entry_key("b"), &b"damaged"[..])
        .unwrap();
    let ids =
        |f: Filter| -> Vec<String> { s.list(&all(f)).unwrap().into_iter().map(|p| p.id).collect() };
    assert_eq!(ids(Filter::default()), vec!["a"]);
    let by_tag = Filter {
        tag: Some("t".into()),
        ..Filter::default()
    };
    assert_eq!(ids(by_tag.clone()), vec!["a"]);
    assert_eq!(s.corrupt_skipped(), 2);
    assert!(matches!(s.get("b"), Err(StoreError::Corrupt { .. })));
    // Marked for repair: its digest no longer matches a peer's.
    assert_eq!(
        s.inner.entries.get(entry_key("b")).unwrap().as_deref(),
        Some(&ZERO[..])
    );
    // A peer's state replaces it; the count does not move.
    s.apply(&[pattern("b", "fix", &["t"])]).unwrap();
    assert_eq!(ids(by_tag), vec!["a", "b"]);
    assert_eq!(s.count(), 2);
    // A local write treats a damaged record as absent.
    s.inner
        .patterns
        .insert(entry_key("a"), &b"damaged"[..])
        .unwrap();
    let written = s
        .edit("a", |old| {
            assert!(old.is_none());
            Ok(pattern("a", "template", &[]))
        })
        .unwrap();
    assert_eq!(s.get("a").unwrap(), Some(written));
    assert_eq!(s.count(), 2);
}
