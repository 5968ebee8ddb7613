//! A hypervisor accounting guest memory: VMs are groups under tenant groups, guest pages are
//! charged when they fault in, and `min`/`low` protection decides whose memory the balloon
//! takes back first.
//!
//! ```text
//! cargo run --example hypervisor
//! ```
//!
//! The walk-through, each step checked with assertions so that a change of behaviour fails it:
//!
//! 1. **Boot.** A host (the tree's root) with two tenants, `acme` (protected: `min` and `low`)
//!    and `globex` (not protected), each with VMs. Every guest frame that faults in is charged
//!    with `try_charge(1)` to its VM's group and records its owner in an `OwnerCell`. A fault
//!    past a tenant's limit is refused, naming the tenant.
//! 2. **Migration.** A VM moves from `globex` to `acme`: a new VM group under `acme`, every
//!    frame's charge and owner pointer moved with `OwnerCell::move_charge`, the old group taken
//!    offline and freed.
//! 3. **Light pressure.** The host wants pages back. The balloon driver follows
//!    `Group::walk_reclaim` from the host with recursive protection: only unprotected memory
//!    is taken, and no `low` event is raised.
//! 4. **Heavy pressure.** The host must shrink below what unprotected memory can give. The
//!    balloon takes memory above `acme`'s `low` first, then, in a second pass that raises
//!    `low` events, memory within it, and never memory within a VM's effective `min`.
//! 5. **Destruction.** A VM is destroyed: its group goes offline while its frames still point
//!    at it ("dying"), the frames are freed, and the group is released and freed (seen by an
//!    `Observer` and in `TreeStats`).
//!
//! Units are 4 KiB guest pages. The tree is built with `batch(0)` (no per-CPU stock), so that
//! every number printed is exact at every step; a hypervisor faulting pages from many vCPU
//! threads would keep the default batch and drain (`Tree::drain_all`) before reading exact
//! numbers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chargetree::counter::LimitError;
use chargetree::group::{ChargeFailure, Group, GroupId, GroupSpec, Observer, OwnerCell, Tree, TreeConfig};

/// 4 KiB pages per MiB.
const MIB: usize = 256;

/// One guest: its group, and one slot per guest frame; a backed frame records its owner.
struct Vm {
    name: &'static str,
    group: Group,
    frames: Vec<Option<OwnerCell>>,
}

impl Vm {
    fn new(name: &'static str, tenant: &Group, ram_pages: usize, spec: GroupSpec<'_>) -> Self {
        let group = tenant.create_child(spec.name(name).max(ram_pages)).expect("tenant online");
        Self { name, group, frames: (0..ram_pages).map(|_| None).collect() }
    }

    /// The guest touches frame `gfn`: the first touch faults it in and charges one page.
    fn fault(&mut self, gfn: usize) -> Result<(), ChargeFailure> {
        if self.frames[gfn].is_none() {
            let charged = self.group.try_charge(1)?;
            assert!(charged.over_high.is_none(), "no `high` is set in this example");
            self.frames[gfn] = Some(OwnerCell::new(self.group.clone()));
        }
        Ok(())
    }

    /// The guest touches its first `pages` frames.
    fn touch(&mut self, pages: usize) -> Result<(), ChargeFailure> {
        (0..pages).try_for_each(|gfn| self.fault(gfn))
    }

    fn resident(&self) -> usize {
        self.frames.iter().filter(|f| f.is_some()).count()
    }

    fn free_frame(&mut self, gfn: usize) -> bool {
        free_frame(&mut self.frames[gfn])
    }

    /// The balloon driver in the guest gives back up to `pages` frames (highest first).
    fn inflate_balloon(&mut self, pages: usize) -> usize {
        let mut freed = 0;
        for gfn in (0..self.frames.len()).rev() {
            if freed == pages {
                break;
            }
            if self.free_frame(gfn) {
                freed += 1;
            }
        }
        freed
    }

    fn free_all(&mut self) {
        free_frames(&mut self.frames);
    }
}

/// Frees one guest frame: empties its owner cell and uncharges the group the cell named
/// (after a move, the new group: the charge went with the pointer). Dropping the handle the
/// cell gave back puts the frame's reference on the group.
fn free_frame(frame: &mut Option<OwnerCell>) -> bool {
    let Some(cell) = frame.take() else { return false };
    let owner = cell.take().expect("a backed frame has an owner");
    owner.uncharge(1);
    true
}

fn free_frames(frames: &mut [Option<OwnerCell>]) {
    for frame in frames {
        free_frame(frame);
    }
}

/// Counts releases and frees. `released` may run inside an allocator in other programs: it
/// only touches atomics.
#[derive(Default)]
struct Lifecycle {
    released: AtomicUsize,
    freed: AtomicUsize,
    last_freed: AtomicUsize,
}

struct LifecycleObserver(Arc<Lifecycle>);

impl Observer for LifecycleObserver {
    fn released(&self, _id: GroupId) {
        self.0.released.fetch_add(1, Ordering::Relaxed);
    }
    fn freed(&self, id: GroupId) {
        self.0.freed.fetch_add(1, Ordering::Relaxed);
        self.0.last_freed.store(id.0, Ordering::Relaxed);
    }
}

/// One balloon request: walks the host's tree in `walk_reclaim`'s order (recursive
/// protection) until `pages` are freed or nothing more can be. Returns what each VM gave,
/// per pass, and the pages freed.
///
/// A visited VM gives at most what lies above its protection: above its effective `low` in
/// the first pass, above its effective `min` in the second (the `low` pass, which the walk
/// only makes when the first fell short, raising the VM's `low` event). Linux scales reclaim
/// the same way and loops over priorities; the driver loops over walks, because taking pages
/// from one VM changes the shares of its siblings.
fn balloon(host: &Group, vms: &mut [Vm], pages: usize) -> (Vec<(&'static str, usize, bool)>, usize) {
    let mut given: Vec<(&'static str, usize, bool)> = Vec::new();
    let mut total = 0;
    for _ in 0..64 {
        if total >= pages {
            break;
        }
        let walk = host.walk_reclaim(pages - total, true, |g, wanted| {
            let Some(vm) = vms.iter_mut().find(|vm| vm.group.ptr_eq(g)) else {
                return 0; // the host or a tenant: no frames of its own
            };
            let c = g.counter();
            let (usage, emin, elow) = (c.usage(), c.effective_min(), c.effective_low());
            // Visited above its effective low: first pass. Within it: the low pass.
            let low_pass = usage <= elow;
            let floor = if low_pass { emin } else { elow.max(emin) };
            let freed = vm.inflate_balloon(wanted.min(usage.saturating_sub(floor)));
            if freed > 0 {
                match given.iter_mut().find(|(n, _, lp)| *n == vm.name && *lp == low_pass) {
                    Some(entry) => entry.1 += freed,
                    None => given.push((vm.name, freed, low_pass)),
                }
            }
            freed
        });
        if walk.reclaimed == 0 {
            break;
        }
        total += walk.reclaimed;
    }
    (given, total)
}

fn mib(pages: usize) -> String {
    format!("{:.1} MiB", pages as f64 / MIB as f64)
}

fn show(tree: &Tree) {
    println!("    {:<12} {:>6} {:>6} {:>6} {:>6} {:>6}", "group", "pages", "max", "min", "low", "low ev");
    for g in tree.groups() {
        let c = g.counter();
        let depth = c.depth();
        let name = format!("{}{}", "  ".repeat(depth), g.name().unwrap_or("?"));
        let max = if c.max() == chargetree::COUNTER_MAX { "-".to_owned() } else { c.max().to_string() };
        println!(
            "    {name:<12} {:>6} {max:>6} {:>6} {:>6} {:>6}",
            c.usage(),
            c.min(),
            c.low(),
            g.events_local().low
        );
    }
}

fn usage(g: &Group) -> usize {
    g.counter().usage()
}

fn main() {
    let lifecycle = Arc::new(Lifecycle::default());
    let tree = Tree::with_config(
        TreeConfig::new()
            .batch(0)
            .root(GroupSpec::new().name("host").max(24 * MIB))
            .observer(LifecycleObserver(lifecycle.clone())),
    );
    let host = tree.root();

    // ---------------------------------------------------------------------------------------
    println!("1. Boot: a 24 MiB host, two tenants, four VMs of 8 MiB each\n");
    let acme =
        host.create_child(GroupSpec::new().name("acme").max(24 * MIB).min(4 * MIB).low(12 * MIB)).unwrap();
    let globex = host.create_child(GroupSpec::new().name("globex").max(12 * MIB)).unwrap();
    // vm-a1 runs acme's database: 4 MiB of it hard-protected. The tenant must grant `min`
    // too: protection is handed down, never more than the parent has.
    let mut vms = vec![
        Vm::new("vm-a1", &acme, 8 * MIB, GroupSpec::new().min(4 * MIB)),
        Vm::new("vm-a2", &acme, 8 * MIB, GroupSpec::new()),
        Vm::new("vm-g1", &globex, 8 * MIB, GroupSpec::new()),
        Vm::new("vm-g2", &globex, 8 * MIB, GroupSpec::new()),
    ];
    for (vm, pages) in vms.iter_mut().zip([6 * MIB, 4 * MIB, 6 * MIB, 6 * MIB]) {
        vm.touch(pages).expect("fits");
        println!("   {} faulted in {} pages ({})", vm.name, vm.resident(), mib(vm.resident()));
    }
    assert_eq!((usage(&acme), usage(&globex), usage(&host)), (2560, 3072, 5632));
    // globex is at its 12 MiB: vm-g2's next fault is refused, naming globex.
    let refused = vms[3].fault(6 * MIB).unwrap_err();
    println!("   vm-g2 touches one more page: refused by globex: {refused}");
    match refused {
        ChargeFailure::Limit { group, max, usage, requested } => {
            assert_eq!((group, max, usage, requested), (globex.id(), 3072, 3072, 1));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((globex.events_local().max, globex.events_local().oom), (1, 1));
    println!("   (globex's `max` and `oom` events count it; the VM would be paused or ballooned)\n");
    show(&tree);

    // ---------------------------------------------------------------------------------------
    println!("\n2. Migration: globex hands vm-g2 over to acme\n");
    let old = vms[3].group.clone();
    let new = acme.create_child(GroupSpec::new().name("vm-g2").max(8 * MIB)).unwrap();
    let mut moved = 0;
    for cell in vms[3].frames.iter().flatten() {
        cell.move_charge(&new, 1).expect("acme has room");
        moved += 1;
    }
    {
        let guard = tree.pin();
        let all_new = vms[3].frames.iter().flatten().all(|c| c.load(&guard).is_some_and(|g| g.is(&new)));
        assert!(all_new, "every frame's owner pointer names the new group");
    }
    println!("   moved {moved} frames: charge and owner pointer of each, with OwnerCell::move_charge");
    assert_eq!((usage(&old), usage(&new)), (0, 1536));
    assert_eq!(
        (usage(&acme), usage(&globex), usage(&host)),
        (4096, 1536, 5632),
        "the host total is unchanged"
    );
    vms[3].group = new;
    let old_id = old.id();
    old.offline().unwrap();
    drop(old);
    tree.reclaim();
    assert_eq!(lifecycle.last_freed.load(Ordering::Relaxed), old_id.0);
    println!(
        "   the old vm-g2 group went offline and was freed (observer: {} released, {} freed)\n",
        lifecycle.released.load(Ordering::Relaxed),
        lifecycle.freed.load(Ordering::Relaxed)
    );
    assert_eq!(tree.stats().dying(), 0);
    show(&tree);

    // ---------------------------------------------------------------------------------------
    println!("\n3. Light pressure: the host wants 4 MiB (1024 pages) back\n");
    let before: Vec<usize> = vms.iter().map(Vm::resident).collect();
    let (given, freed) = balloon(&host, &mut vms, 4 * MIB);
    for (name, pages, low_pass) in &given {
        println!(
            "   {name} gave {pages} pages{}",
            if *low_pass { " from within its low (low event)" } else { "" }
        );
    }
    assert_eq!(freed, 1024);
    assert_eq!(given, vec![("vm-g1", 1024, false)], "only unprotected memory was taken");
    assert_eq!(vms[0].resident(), before[0]);
    assert_eq!(vms[1].resident(), before[1]);
    assert_eq!(vms[3].resident(), before[3]);
    assert_eq!(host.events().low, 0, "nothing protected was touched: no `low` event anywhere");
    println!("   acme's VMs kept everything (acme's low covers 12 MiB); no `low` event was raised\n");
    show(&tree);

    // ---------------------------------------------------------------------------------------
    println!("\n4. Heavy pressure: the host must shrink from 24 MiB to 10 MiB (2560 pages)\n");
    let shrink = 10 * MIB;
    let busy = host.set_max(shrink).unwrap_err();
    println!("   set_max refuses while usage is above it: {busy}");
    assert_eq!(busy, LimitError::Busy { usage: 4608, limit: 2560 });
    let (given, freed) = balloon(&host, &mut vms, usage(&host) - shrink);
    for (name, pages, low_pass) in &given {
        let how =
            if *low_pass { "within its protection (second pass: low event)" } else { "above its protection" };
        println!("   {name:<6} gave {pages:>4} pages {how}");
    }
    assert_eq!(freed, 2048);
    host.set_max(shrink).unwrap();
    println!("   set_max({shrink}) now succeeds; usage {}", usage(&host));
    println!(
        "   (first pass: vm-g1 had no protection; acme's 12 MiB low is shared among its VMs in\n    \
         proportion to their usage (recursive protection), each gave what it held above its\n    \
         share; only then the second pass took memory within a share, raising `low`)\n"
    );
    // Unprotected memory went first: vm-g1 gave everything it had in the first pass, and
    // acme gave only what lay above its low (12 MiB) in the first pass.
    assert_eq!(vms[2].resident(), 0);
    let first_pass: usize = given.iter().filter(|g| !g.2).map(|g| g.1).sum();
    let low_pass: usize = given.iter().filter(|g| g.2).map(|g| g.1).sum();
    assert_eq!((first_pass, low_pass), (512 + 1024, 512), "first pass: globex + acme above low");
    // The low pass was needed, and raised `low` exactly where it took memory.
    let low_events: Vec<(&str, usize)> =
        vms.iter().map(|vm| (vm.name, vm.group.events_local().low)).collect();
    for (name, _, low_pass) in &given {
        if *low_pass {
            assert!(low_events.iter().any(|(n, e)| n == name && *e > 0), "{name} raised low");
        }
    }
    assert_eq!(globex.events().low, 0, "globex had no protection to break");
    assert!(acme.events().low > 0);
    // vm-a1's hard protection held.
    assert!(vms[0].resident() >= 4 * MIB, "vm-a1 keeps its min");
    assert_eq!(usage(&acme), 2560);
    println!(
        "   low events: {}",
        low_events.iter().map(|(n, e)| format!("{n} {e}")).collect::<Vec<_>>().join(", ")
    );
    println!("   vm-a1 kept {} pages: its 4 MiB min was never touched\n", vms[0].resident());
    show(&tree);

    // ---------------------------------------------------------------------------------------
    println!("\n5. Destruction: acme deletes vm-a2\n");
    let a2 = vms.remove(1);
    let (a2_id, a2_pages) = (a2.group.id(), a2.resident());
    a2.group.offline().unwrap();
    let Vm { name, group, mut frames } = a2;
    drop(group);
    tree.reclaim();
    assert_eq!(tree.stats().dying(), 1, "offline, but its frames still point at it");
    println!("   {name} is offline; its {a2_pages} frames still hold references: dying 1");
    free_frames(&mut frames);
    drop(frames);
    tree.reclaim();
    let stats = tree.stats();
    assert_eq!(stats.dying(), 0);
    assert_eq!(lifecycle.last_freed.load(Ordering::Relaxed), a2_id.0, "the observer saw it freed");
    println!("   its frames are freed: the last reference went with them, the group is freed");
    println!(
        "   TreeStats: created {}, offlined {}, released {}, freed {}, dying {}",
        stats.created,
        stats.offlined,
        stats.released,
        stats.freed,
        stats.dying()
    );
    assert_eq!((stats.created, stats.offlined, stats.released, stats.freed), (8, 2, 2, 2));

    // ---------------------------------------------------------------------------------------
    println!("\nShutdown: every guest frame freed");
    for vm in &mut vms {
        vm.free_all();
    }
    for g in tree.groups() {
        assert_eq!(usage(&g), 0, "{:?}", g.name());
    }
    println!("   every group's usage is back to 0");
}
