//! Locks: entry-only mutex hooks, contention, long waits and holds, locks
//! taken before they were watched, a lock-order cycle of three.
use super::*;

#[test]
fn a_three_lock_cycle_is_reported_with_its_whole_chain() {
    // kvm.lock -> group_lock, then group_lock -> dev_set->lock, then a third
    // thread takes kvm.lock under dev_set->lock: a cycle of three classes
    // that no pair of paths shows alone. Lockdep prints every link.
    let mut s = Script::new();
    s.lock(101, KVM_LOCK, KvmLock, KVM)
        .lock(101, GROUP_LOCK, VfioGroupLock, GROUP)
        .unlock(101, GROUP_LOCK, VfioGroupLock, GROUP)
        .unlock(101, KVM_LOCK, KvmLock, KVM);
    s.lock(102, GROUP_LOCK, VfioGroupLock, GROUP)
        .lock(102, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .unlock(102, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .unlock(102, GROUP_LOCK, VfioGroupLock, GROUP);
    s.lock(103, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .lock(103, KVM_LOCK, KvmLock, KVM)
        .unlock(103, KVM_LOCK, KvmLock, KVM)
        .unlock(103, DEV_SET_LOCK, VfioDevSetLock, DEV_SET);
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::LockOrderInversion], "{f:#?}");
    assert_eq!(
        lock_names(&f[0].locks),
        ["vfio_device_set.lock", "kvm.lock", "vfio_group.group_lock"]
    );
    assert!(
        summary(&f[0]).contains("a cycle of 3 locks"),
        "{}",
        summary(&f[0])
    );
    let text = detail(&f[0]).join("\n");
    assert!(
        text.contains("-> #2 (vfio_group.group_lock -> vfio_device_set.lock)"),
        "{text}"
    );
    assert!(
        text.contains("-> #1 (kvm.lock -> vfio_group.group_lock)"),
        "{text}"
    );
    assert!(
        text.contains("-> #0 (vfio_device_set.lock -> kvm.lock)"),
        "{text}"
    );
    assert!(
        text.contains("kvm.lock --> vfio_group.group_lock --> vfio_device_set.lock"),
        "{text}"
    );
}

/// mutex_lock is hooked at entry only: an attempt, then whatever the thread
/// does next. The held set, the lock graph and the findings must be as with
/// explicit acquisitions.
fn entry_only(s: &mut Script) {
    s.events.retain(|e| {
        !(e.kind == kvscope::event::Kind::LockAcquired && e.hook == trace_common::HookId::MutexLock)
    });
}

#[test]
fn entry_only_mutex_lock_still_sees_s3_and_the_inversion() {
    // S3 on 6.6+ with attempts only.
    let mut s = s3_66();
    entry_only(&mut s);
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::DestroyUnderLock], "{f:#?}");
    assert_eq!(
        lock_names(&f[0].locks),
        ["vfio_group.group_lock", "vfio_device_set.lock"]
    );
    // S2 on 6.1 with attempts only.
    let mut s = Script::new();
    setup(&mut s);
    open_61(&mut s, true);
    s.close_kvm_vfio_fd(QEMU, KVM, KVM_LOCK, 3, |s| {
        s.lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
            .file_unlink(QEMU, GROUP)
            .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    });
    entry_only(&mut s);
    let (e, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::LockOrderInversion], "{f:#?}");
    assert_eq!(e.anomalies.unmatched_release, 0);
}

#[test]
fn entry_only_mutex_lock_waits_until_its_contention_ends() {
    let mut s = Script::new();
    s.attempt(QEMU, KVM_LOCK, KvmLock, KVM);
    s.ev(
        QEMU,
        kvscope::event::Kind::ContentionBegin,
        trace_common::HookId::ContentionBegin,
    )
    .lock = s.events[0].lock;
    s.sleep_ms(3_000);
    s.ev(
        QEMU,
        kvscope::event::Kind::ContentionEnd,
        trace_common::HookId::ContentionEnd,
    )
    .lock = s.events[0].lock;
    s.unlock(QEMU, KVM_LOCK, KvmLock, KVM);
    let (e, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::LongWait], "{f:#?}");
    assert_eq!(e.anomalies.unmatched_release, 0);
    // A thread that never returns from its mutex_lock stays waiting.
    let mut s = Script::new();
    s.attempt(QEMU, KVM_LOCK, KvmLock, KVM);
    let (e, _) = run(&s);
    assert!(e.held_locks(QEMU).is_empty());
}

#[test]
fn long_waits_and_holds_cross_their_thresholds() {
    let mut s = Script::new();
    s.attempt(QEMU, KVM_LOCK, KvmLock, KVM);
    s.sleep_ms(1500);
    s.ev(
        QEMU,
        kvscope::event::Kind::LockAcquired,
        trace_common::HookId::MutexLock,
    )
    .lock = s.events[0].lock;
    s.sleep_ms(6000);
    s.unlock(QEMU, KVM_LOCK, KvmLock, KVM);
    let (_, f) = run(&s);
    assert_eq!(
        kinds(&f),
        [FindingKind::LongWait, FindingKind::LongHold],
        "{f:#?}"
    );
}

/// 6.6+: the open path takes group_lock and dev_set->lock before the device
/// hook registers them as watched, so the first event of each lock is its
/// release. Not an anomaly; a release of a lock seen before, by a thread not
/// seen taking it, is one (named by class).
#[test]
fn releases_of_locks_taken_before_they_were_watched_are_no_anomaly() {
    let mut s = Script::new();
    setup(&mut s);
    s.vfio_get_kvm(QEMU, DEV, KVM, 3);
    // A driver hook's owner-word report (deep too) is no sighting of an
    // acquire: the release that follows is still "taken before watched".
    s.held(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .with_hook(trace_common::HookId::TestdevLockKvm);
    s.device_opened(QEMU, DEV, GROUP, 1)
        .unlock(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    // Later, a close takes and drops group_lock: seen both ways.
    s.lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .unlock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    let (e, f) = run(&s);
    assert!(kinds(&f).is_empty(), "{f:?}");
    let a = &e.anomalies;
    assert_eq!(a.unmatched_release, 0, "{a:?}");
    assert_eq!(
        a.taken_before_watched
            .iter()
            .map(|(c, n)| (c.as_str(), *n))
            .collect::<Vec<_>>(),
        [("vfio_device_set.lock", 1), ("vfio_group.group_lock", 1)]
    );
    // A second release nobody was seen taking: a missed acquire.
    let mut s2 = s.clone();
    s2.unlock(QEMU + 1, GROUP_LOCK, VfioGroupLock, GROUP);
    let (e, _) = run(&s2);
    assert_eq!(e.anomalies.unmatched_release, 1);
    assert_eq!(
        e.anomalies
            .unmatched_release_by_class
            .get("vfio_group.group_lock"),
        Some(&1)
    );
}

/// Lean lock watching: no mutex event at all; at kvm_destroy_vm the owner
/// words showed the releasing thread holding group_lock and dev_set->lock.
/// The same S3 finding as with every acquire seen, and nothing lingers: the
/// held locks count for that destroy only.
#[test]
fn lean_owner_words_at_destroy_give_the_same_destroy_under_lock() {
    let s = s3_66();
    let mut events: Vec<_> = s.events.into_iter().filter(|e| e.lock.is_none()).collect();
    let at = events
        .iter()
        .position(|e| e.kind == kvscope::event::Kind::VmDestroyed)
        .expect("a destroy");
    let mut held = Script::new();
    held.t = events[at].ts_ns - 10;
    held.held(QEMU, GROUP_LOCK, VfioGroupLock, GROUP).held(
        QEMU,
        DEV_SET_LOCK,
        VfioDevSetLock,
        DEV_SET,
    );
    events.splice(at..at, held.events);
    // A second VM ends on the same thread later, under no lock.
    let mut later = Script::new();
    later.t = events.last().unwrap().ts_ns + 1_000_000;
    later
        .create_vm(QEMU, KVM + 0x10_0000)
        .close_vm_fd(QEMU, KVM + 0x10_0000, 1);
    events.extend(later.events);
    let mut e = Engine::new(Config::default());
    let mut f: Vec<Finding> = events.iter().flat_map(|ev| e.ingest(ev)).collect();
    f.extend(e.tick(u64::MAX / 2));
    assert_eq!(kinds(&f), [FindingKind::DestroyUnderLock], "{f:#?}");
    assert_eq!(
        lock_names(&f[0].locks),
        ["vfio_group.group_lock", "vfio_device_set.lock"]
    );
    assert_eq!(f[0].object(ObjectRole::Kvm), Some(KVM));
    assert!(e.held_locks(QEMU).is_empty());
}

/// Lean lock watching: no mutex hook, but the contention tracepoint fires for
/// a watched lock whose owner word names the waiting thread: it waits for
/// itself. Raised once, with the acquire said unseen.
#[test]
fn lean_a_wait_on_a_lock_the_thread_owns_is_a_self_deadlock() {
    let mut s = Script::new();
    s.create_vm(QEMU, KVM);
    s.held(QEMU, KVM_LOCK, KvmLock, KVM)
        .with_hook(trace_common::HookId::ContentionBegin);
    let e = s.ev(
        QEMU,
        kvscope::event::Kind::ContentionBegin,
        trace_common::HookId::ContentionBegin,
    );
    e.lock = Some(kvscope::event::LockRef {
        addr: KVM_LOCK,
        class: kvscope::event::LockClassName(KvmLock),
        owner: KVM,
    });
    s.close_vm_fd(QEMU, KVM, 1);
    let (_, f) = run(&s);
    assert_eq!(kinds(&f), [FindingKind::SelfDeadlock], "{f:#?}");
    assert_eq!(f[0].count, 1);
    let text = detail(&f[0]).join("\n");
    assert!(text.contains("owner word names this task"), "{text}");
    // Another thread waiting on the same lock is only a wait.
    let mut s = Script::new();
    s.create_vm(QEMU, KVM);
    let e = s.ev(
        QEMU + 1,
        kvscope::event::Kind::ContentionBegin,
        trace_common::HookId::ContentionBegin,
    );
    e.lock = Some(kvscope::event::LockRef {
        addr: KVM_LOCK,
        class: kvscope::event::LockClassName(KvmLock),
        owner: KVM,
    });
    let (_, f) = run(&s);
    assert!(
        f.iter().all(|x| x.kind != FindingKind::SelfDeadlock),
        "{f:#?}"
    );
}

/// Lean, 6.1 shape of S2 with a driver that takes kvm->lock in open_device:
/// no mutex event at all. At the driver's call the owner words show
/// dev_set->lock and group_lock held; at vfio_file_set_kvm(NULL) from
/// kvm_vfio_release they show kvm->lock held. The lock table says what each
/// call takes, so the two orders close the S2 cycle, each edge said to come
/// from the table.
fn lean_s2_61(s: &mut Script) {
    use trace_common::HookId::{TestdevLockKvm, VfioFileSetKvm};
    setup(s);
    s.held(QEMU, DEV_SET_LOCK, VfioDevSetLock, DEV_SET)
        .with_hook(TestdevLockKvm)
        .held(QEMU, GROUP_LOCK, VfioGroupLock, GROUP)
        .with_hook(TestdevLockKvm);
    let e = s.ev(QEMU, kvscope::event::Kind::Other, TestdevLockKvm);
    e.device = Some(DEV);
    e.kvm = Some(KVM);
    s.device_opened(QEMU, DEV, GROUP, 1);
    s.held(QEMU, KVM_LOCK, KvmLock, KVM)
        .with_hook(VfioFileSetKvm)
        .file_unlink(QEMU, GROUP);
}

fn run_with(s: &Script, cfg: Config) -> Vec<Finding> {
    let mut e = Engine::new(cfg);
    let mut f: Vec<Finding> = s.events.iter().flat_map(|ev| e.ingest(ev)).collect();
    f.extend(e.tick(s.t + 1));
    f
}

#[test]
fn lean_table_edges_close_the_s2_cycle_and_say_where_they_came_from() {
    let mut s = Script::new();
    lean_s2_61(&mut s);
    let lean_61 = Config {
        table_edges: true,
        set_kvm_takes_group_lock: true,
        ..Config::default()
    };
    let f = run_with(&s, lean_61.clone());
    assert_eq!(kinds(&f), [FindingKind::LockOrderInversion], "{f:#?}");
    assert_eq!(
        lock_names(&f[0].locks),
        ["kvm.lock", "vfio_group.group_lock"]
    );
    let text = detail(&f[0]).join("\n");
    assert!(
        text.contains("(vfio_group.group_lock -> kvm.lock): first seen")
            && text.contains("[table: testdev_lock_kvm takes it;"),
        "{text}"
    );
    assert!(
        text.contains("(kvm.lock -> vfio_group.group_lock): now")
            && text.contains("[table: vfio_file_set_kvm takes it;"),
        "{text}"
    );
    assert!(text.contains("address not read"), "{text}");
    // 6.3+: vfio_file_set_kvm takes a spinlock, not group_lock: no cycle.
    let lean_66 = Config {
        set_kvm_takes_group_lock: false,
        ..lean_61.clone()
    };
    assert!(run_with(&s, lean_66).is_empty());
    // Deep: edges come from the acquires it sees, never from the table.
    assert!(run_with(&s, Config::default()).is_empty());
}

/// Two threads each hold one watched lock and wait, at the contention
/// tracepoint, for the other's (the owner word names the holder): a deadlock,
/// raised once when the second wait closes the cycle, naming both threads,
/// both locks and both stacks. Once a wait ends, a new wait on the same lock
/// by one of them is no deadlock.
#[test]
fn a_cycle_of_contended_waits_is_a_deadlock_now() {
    use kvscope::event::{Kind, LockClassName, LockRef};
    use trace_common::HookId::ContentionBegin;
    let (a, b) = (QEMU, QEMU + 1);
    let wait = |s: &mut Script, pid: u32, addr: u64, class, owner, holder: u32, stack: u32| {
        let e = s.ev(pid, Kind::ContentionBegin, ContentionBegin);
        e.lock = Some(LockRef {
            addr,
            class: LockClassName(class),
            owner,
        });
        e.waits_for = Some(holder);
        e.stack_id = Some(stack);
    };
    let mut s = Script::new();
    s.create_vm(QEMU, KVM);
    wait(&mut s, a, DEV_SET_LOCK, VfioDevSetLock, DEV_SET, b, 7);
    wait(&mut s, b, KVM_LOCK, KvmLock, KVM, a, 8);
    let (_, f) = run(&s);
    let dl: Vec<&Finding> = f
        .iter()
        .filter(|x| x.kind == FindingKind::Deadlock)
        .collect();
    assert_eq!(dl.len(), 1, "{f:#?}");
    assert_eq!(dl[0].severity(), Severity::Critical);
    assert_eq!(
        lock_names(&dl[0].locks),
        ["vfio_device_set.lock", "kvm.lock"]
    );
    assert_eq!(dl[0].stacks, [8, 7]);
    let text = detail(dl[0]).join("\n");
    assert!(
        text.contains("t101/101 waits since")
            && text.contains("for kvm.lock at 0xffff888100000040, held by t100/100"),
        "{text}"
    );
    assert!(summary(dl[0]).contains("2 threads wait for each other"));
    // A's wait ended (it did something else); B waits on alone: no cycle.
    let mut s2 = Script::new();
    s2.create_vm(QEMU, KVM);
    wait(&mut s2, a, DEV_SET_LOCK, VfioDevSetLock, DEV_SET, b, 7);
    s2.held(a, GROUP_LOCK, VfioGroupLock, GROUP); // not an end: a report about it
    s2.file_link(a, GROUP, KVM); // a step of its own: its wait is over
    wait(&mut s2, b, KVM_LOCK, KvmLock, KVM, a, 8);
    let (_, f) = run(&s2);
    assert!(f.iter().all(|x| x.kind != FindingKind::Deadlock), "{f:#?}");
}

/// Deep switched to lean while running: what deep saw held goes (no release
/// will be seen), so a VM destroyed later on that thread is not said to die
/// under a lock the thread has long dropped; lean's table edges start.
#[test]
fn switching_to_lean_forgets_what_deep_saw_held() {
    let mut s = Script::new();
    setup(&mut s);
    s.lock(QEMU, GROUP_LOCK, VfioGroupLock, GROUP);
    let mut later = Script::new();
    later.t = s.t + 1_000;
    later.close_vm_fd(QEMU, KVM, 2).close_vm_fd(QEMU, KVM, 1);
    // Still deep: group_lock was never released, so it counts as held.
    let mut all = s.clone();
    all.events.extend(later.events.iter().cloned());
    let (_, f) = run(&all);
    assert!(f.iter().any(|x| x.kind == FindingKind::DestroyUnderLock));
    let mut e = Engine::new(Config::default());
    for ev in &s.events {
        e.ingest(ev);
    }
    assert_eq!(e.held_locks(QEMU).len(), 1);
    e.set_lock_watch(true);
    assert!(e.held_locks(QEMU).is_empty());
    assert!(e.cfg.table_edges);
    let f: Vec<Finding> = later.events.iter().flat_map(|ev| e.ingest(ev)).collect();
    assert!(
        f.iter().all(|x| x.kind != FindingKind::DestroyUnderLock),
        "{f:#?}"
    );
}
