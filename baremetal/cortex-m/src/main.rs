//! A firmware test image: chargetree's counters on an emulated Cortex-M without a heap,
//! charged at the same time by the main loop and by the SysTick exception handler.
//!
//! Built for two cores, both emulated by QEMU:
//!
//! | target | QEMU machine | core | atomics |
//! |---|---|---|---|
//! | `thumbv7em-none-eabihf` | `mps2-an386` | Cortex-M4F | native (`ldrex`/`strex`) |
//! | `thumbv6m-none-eabi` | `microbit` | Cortex-M0 | no compare-and-swap: portable-atomic inside critical sections (`critical-section` feature) |
//!
//! Output and verdict go through semihosting: QEMU exits with 0 when every check passed and
//! with 1 when one failed (a failed check panics; the panic handler reports it). A hard fault
//! exits with 1 as well.
//!
//! # The counters (units: blocks)
//!
//! ```text
//! BOARD (max 144)
//! ├── RADIO (max 96, min 24, low 48)
//! │   ├── RX (max 64, toggled to 48 and back; min 8, low 16)   main loop and SysTick
//! │   └── TX (max 40)                                          main loop
//! └── SENSORS (max 72)
//!     └── SAMPLES (no limit of its own)                        main loop and SysTick
//! ```
//!
//! Together the two contexts want more than BOARD's 144 blocks, so charges are refused at
//! every level.
//!
//! # Phases
//!
//! 1. **Boot**: limits and protection set on the `static` counters; a charge over a limit
//!    names the counter that refused and its level; `set_max` below the usage is refused.
//! 2. **Storm**: the main loop charges and uncharges random amounts on RX, TX and SAMPLES and
//!    toggles RX's limit, while SysTick fires every few thousand cycles and charges and
//!    uncharges RX and SAMPLES. Every 32 iterations, with interrupts masked, the counters are
//!    compared with what the two contexts hold: each leaf's usage is exactly the sum of both
//!    ledgers, each parent the sum of its children, no usage above its limit, and the
//!    protected-usage sums exact (protocol P at quiescence). Runs until the handler has
//!    fired at least [`TICKS_MIN`] times and has interrupted the main loop inside a
//!    chargetree call at least once.
//! 3. **Settle**: SysTick stopped, both ledgers returned: every counter at 0, no clamped
//!    uncharge anywhere, each fail count equal to the refusals the two contexts saw at that
//!    counter, every peak within the limits and at least the largest usage a checkpoint saw.
//! 4. **Peaks**: a resettable `PeakWatcher` and the global peak's reset, on known charges.
//! 5. **Protection**: effective `min`/`low` of a known state, computed by hand from the
//!    rules of Linux's `effective_protection()` (`mm/page_counter.c`): a child of the reclaim
//!    root gets what it declares, overcommitted siblings split the parent's protection in
//!    proportion to their use, and recursive protection hands unclaimed protection down.

#![no_std]
#![no_main]

use core::fmt::Write as _;
use core::pin::pin;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering, compiler_fence};

use chargetree::counter::{ChargeError, Counter, LimitError, PeakWatcher};
use cortex_m::peripheral::SYST;
use cortex_m::peripheral::syst::SystClkSource;
use cortex_m_rt::{ExceptionFrame, entry, exception};
use cortex_m_semihosting::{debug, hio, hprintln};

// ---------------------------------------------------------------------------------------------
// The counters: statics with `&'static` parents.

static BOARD: Counter<'static> = Counter::new_root();
static RADIO: Counter<'static> = Counter::new(Some(&BOARD));
static RX: Counter<'static> = Counter::new(Some(&RADIO));
static TX: Counter<'static> = Counter::new(Some(&RADIO));
static SENSORS: Counter<'static> = Counter::new(Some(&BOARD));
static SAMPLES: Counter<'static> = Counter::new(Some(&SENSORS));

const I_RADIO: usize = 1;
const I_RX: usize = 2;
const I_TX: usize = 3;
const I_SENSORS: usize = 4;
const I_SAMPLES: usize = 5;
const N: usize = 6;

/// Indexed by the `I_*` constants (0 is the board).
static NODES: [&Counter<'static>; N] = [&BOARD, &RADIO, &RX, &TX, &SENSORS, &SAMPLES];
static NAMES: [&str; N] = ["board", "radio", "rx", "tx", "sensors", "samples"];

/// The largest limit RX ever has (the storm toggles it between this and [`RX_MAX_LOW`]).
const RX_MAX_HIGH: usize = 64;
const RX_MAX_LOW: usize = 48;

fn index_of(c: &Counter<'static>) -> usize {
    NODES.iter().position(|n| ptr::eq(*n, c)).expect("one of the image's counters")
}

// ---------------------------------------------------------------------------------------------
// State shared with the SysTick handler.
//
// Every statistic below has a single writer (the handler, or the main loop), so it is updated
// with a load and a store: thumbv6m has no atomic read-modify-write, and none is needed. The
// main loop reads the handler's values only with interrupts masked or with SysTick stopped;
// on one core the handler's stores are then complete and visible in program order.

/// The handler charges only while this is set (it always counts its ticks).
static STORM: AtomicBool = AtomicBool::new(false);
/// Set by the main loop around each of its calls into chargetree.
static IN_CALL: AtomicBool = AtomicBool::new(false);

static TICKS: AtomicU32 = AtomicU32::new(0);
/// Ticks that arrived while the main loop was inside a chargetree call.
static PREEMPTED: AtomicU32 = AtomicU32::new(0);
static ISR_RNG: AtomicU32 = AtomicU32::new(0x9e37_79b9);
static ISR_CHARGES: AtomicU32 = AtomicU32::new(0);
static ISR_UNCHARGES: AtomicU32 = AtomicU32::new(0);
/// What the handler holds: `(counter index << 8) | blocks`, 0 for a free entry.
static ISR_LEDGER: [AtomicU32; 16] = [const { AtomicU32::new(0) }; 16];
/// Blocks the handler holds, per counter.
static ISR_HELD: [AtomicU32; N] = [const { AtomicU32::new(0) }; N];
/// Refusals the handler saw, per refusing counter.
static ISR_FAILS: [AtomicU32; N] = [const { AtomicU32::new(0) }; N];

/// `a += by` for a value with one writer (see above).
fn bump(a: &AtomicU32, by: u32) {
    // ORDERING: Relaxed; single writer, and readers in the other context run either masked
    // or after SysTick is stopped (program order on one core).
    a.store(a.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
}

fn get(a: &AtomicU32) -> u32 {
    // ORDERING: Relaxed; see `bump`.
    a.load(Ordering::Relaxed)
}

fn xorshift(mut x: u32) -> u32 {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    x
}

/// Runs one call into chargetree from the main loop, flagged for the handler.
fn in_call<R>(f: impl FnOnce() -> R) -> R {
    IN_CALL.store(true, Ordering::Relaxed);
    // ORDERING: a compiler fence orders the flag against the call for the handler, which
    // runs on this same core (what `compiler_fence` is for: signal and interrupt handlers).
    compiler_fence(Ordering::SeqCst);
    let r = f();
    compiler_fence(Ordering::SeqCst);
    IN_CALL.store(false, Ordering::Relaxed);
    r
}

/// Checks a refusal: `at` must be `level` parents up from `charged`. Returns `at`'s index.
fn refused_by(charged: &'static Counter<'static>, err: ChargeError<'_, 'static>) -> usize {
    match err {
        ChargeError::Limit { at, level, .. } => {
            let expected = charged.ancestors_and_self().nth(level).expect("level within the path");
            assert!(ptr::eq(expected, at), "refusal at level {level} names a counter off the path");
            index_of(at)
        }
        other => panic!("unexpected charge error: {other}"),
    }
}

#[exception]
fn SysTick() {
    bump(&TICKS, 1);
    if IN_CALL.load(Ordering::Relaxed) {
        bump(&PREEMPTED, 1);
    }
    if !STORM.load(Ordering::Relaxed) {
        return;
    }
    let r = xorshift(get(&ISR_RNG));
    ISR_RNG.store(r, Ordering::Relaxed);
    let slot = (r >> 8) as usize % ISR_LEDGER.len();
    let entry = get(&ISR_LEDGER[slot]);
    if entry != 0 {
        // Give back what this entry holds.
        let (i, n) = ((entry >> 8) as usize, entry & 0xff);
        NODES[i].uncharge(n as usize);
        ISR_LEDGER[slot].store(0, Ordering::Relaxed);
        ISR_HELD[i].store(get(&ISR_HELD[i]) - n, Ordering::Relaxed);
        bump(&ISR_UNCHARGES, 1);
        return;
    }
    let i = if r & 1 == 0 { I_RX } else { I_SAMPLES };
    let n = 1 + (r >> 16) % 6;
    match NODES[i].try_charge(n as usize) {
        Ok(()) => {
            ISR_LEDGER[slot].store(((i as u32) << 8) | n, Ordering::Relaxed);
            bump(&ISR_HELD[i], n);
            bump(&ISR_CHARGES, 1);
        }
        Err(e) => bump(&ISR_FAILS[refused_by(NODES[i], e)], 1),
    }
}

// ---------------------------------------------------------------------------------------------
// The main loop's side.

/// The SysTick period in core cycles. QEMU's SysTick counts in virtual time (host time
/// without `-icount`), so this sets how often the handler runs, not how much work the main
/// loop gets through between two ticks.
const RELOAD: u32 = 4_000;
/// The storm lasts at least this many ticks...
const TICKS_MIN: u32 = 2_000;
/// ...and at least this many main-loop iterations...
const ITERATIONS_MIN: u32 = 20_000;
/// ...and gives up (fails) after this many iterations.
const ITERATIONS_MAX: u32 = 2_000_000;

struct Main {
    rng: u32,
    /// `(counter index, blocks)` of each charge the main loop holds.
    ledger: [Option<(usize, usize)>; 24],
    held: [usize; N],
    fails: [u32; N],
    charges: u32,
    uncharges: u32,
    /// The largest usage of each counter that a checkpoint saw.
    seen: [usize; N],
    checkpoints: u32,
    limit_changes: u32,
    limit_busy: u32,
}

impl Main {
    fn step(&mut self) {
        self.rng = xorshift(self.rng);
        let r = self.rng;
        let slot = (r >> 4) as usize % self.ledger.len();
        if let Some((i, n)) = self.ledger[slot] {
            if r & 3 != 0 {
                in_call(|| NODES[i].uncharge(n));
                self.ledger[slot] = None;
                self.held[i] -= n;
                self.uncharges += 1;
                return;
            }
            return; // this entry stays charged a while longer
        }
        let i = [I_RX, I_TX, I_SAMPLES][(r >> 12) as usize % 3];
        let n = 1 + (r >> 20) as usize % 8;
        match in_call(|| NODES[i].try_charge(n)) {
            Ok(()) => {
                self.ledger[slot] = Some((i, n));
                self.held[i] += n;
                self.charges += 1;
            }
            Err(e) => self.fails[refused_by(NODES[i], e)] += 1,
        }
    }

    /// Lowers RX's limit to 48 or raises it back to 64 while the handler charges RX.
    fn toggle_rx_limit(&mut self) {
        let limit = if RX.max() == RX_MAX_HIGH { RX_MAX_LOW } else { RX_MAX_HIGH };
        match in_call(|| RX.set_max(limit)) {
            Ok(()) => self.limit_changes += 1,
            // Lowering is refused while RX holds more than 48 blocks.
            Err(LimitError::Busy { usage, limit: asked, .. }) => {
                assert_eq!(asked, RX_MAX_LOW, "raising a limit is never refused");
                assert!(usage > RX_MAX_LOW, "refused at usage {usage}");
                self.limit_busy += 1;
            }
            Err(e) => panic!("set_max: {e}"),
        }
    }

    /// With interrupts masked: both contexts are outside chargetree, so the counters are
    /// quiescent and must match the ledgers exactly.
    fn checkpoint(&mut self) {
        cortex_m::interrupt::free(|_| {
            self.checkpoints += 1;
            for i in [I_RX, I_TX, I_SAMPLES] {
                let expected = self.held[i] + get(&ISR_HELD[i]) as usize;
                assert_eq!(NODES[i].usage(), expected, "{}: usage vs both ledgers", NAMES[i]);
            }
            assert_eq!(RADIO.usage(), RX.usage() + TX.usage(), "radio = rx + tx");
            assert_eq!(SENSORS.usage(), SAMPLES.usage(), "sensors = samples");
            assert_eq!(BOARD.usage(), RADIO.usage() + SENSORS.usage(), "board = radio + sensors");
            for (i, c) in NODES.iter().enumerate() {
                let usage = c.usage();
                assert!(usage <= c.max(), "{}: usage {usage} above max {}", NAMES[i], c.max());
                self.seen[i] = self.seen[i].max(usage);
                assert_eq!(c.min_usage(), usage.min(c.min()), "{}: min_usage", NAMES[i]);
                assert_eq!(c.low_usage(), usage.min(c.low()), "{}: low_usage", NAMES[i]);
            }
            assert_eq!(RADIO.children_min_usage(), RX.min_usage() + TX.min_usage());
            assert_eq!(RADIO.children_low_usage(), RX.low_usage() + TX.low_usage());
            assert_eq!(BOARD.children_min_usage(), RADIO.min_usage() + SENSORS.min_usage());
            assert_eq!(BOARD.children_low_usage(), RADIO.low_usage() + SENSORS.low_usage());
        });
    }
}

fn boot() {
    BOARD.set_max(144).unwrap();
    RADIO.set_max(96).unwrap();
    RADIO.set_min(24).unwrap();
    RADIO.set_low(48).unwrap();
    RX.set_max(RX_MAX_HIGH).unwrap();
    RX.set_min(8).unwrap();
    RX.set_low(16).unwrap();
    TX.set_max(40).unwrap();
    SENSORS.set_max(72).unwrap();

    // TX's own limit refuses (level 0); then RADIO's (level 1) once RX holds 60.
    TX.try_charge(40).unwrap();
    let e = TX.try_charge(1).unwrap_err();
    assert_eq!(refused_by(&TX, e), I_TX);
    assert!(matches!(e, ChargeError::Limit { level: 0, .. }));
    RX.try_charge(56).unwrap();
    let e = RX.try_charge(1).unwrap_err();
    assert_eq!((refused_by(&RX, e), e.level()), (I_RADIO, Some(1)));
    assert_eq!((RADIO.usage(), BOARD.usage()), (96, 96), "the refused charge was rolled back");
    // SENSORS' limit refuses a charge of SAMPLES, which has none of its own.
    let e = SAMPLES.try_charge(73).unwrap_err();
    assert_eq!((refused_by(&SAMPLES, e), e.level()), (I_SENSORS, Some(1)));
    // A limit below the usage is refused and changes nothing.
    match RX.set_max(10) {
        Err(LimitError::Busy { usage: 56, limit: 10, .. }) => {}
        other => panic!("set_max below usage: {other:?}"),
    }
    assert_eq!(RX.max(), RX_MAX_HIGH);
    assert_eq!((TX.failcnt(), RADIO.failcnt(), SENSORS.failcnt()), (1, 1, 1));
    RX.uncharge(56);
    TX.uncharge(40);
    assert_eq!((RX.peak(), TX.peak(), RADIO.peak(), BOARD.peak()), (56, 40, 96, 96));
    for c in NODES {
        assert_eq!(c.usage(), 0);
        c.reset_peak();
    }
    // The storm's fail counts are compared with what it saw: start them from the boot's.
    hprintln!("boot: limits set, refusals named at levels 0 and 1, set_max below usage refused");
}

fn storm(syst: &mut SYST) -> Main {
    let mut m = Main {
        rng: 0x1234_5678,
        ledger: [None; 24],
        held: [0; N],
        fails: [0; N],
        charges: 0,
        uncharges: 0,
        seen: [0; N],
        checkpoints: 0,
        limit_changes: 0,
        limit_busy: 0,
    };
    // The boot's refusals count too: fold them into the main loop's tally.
    for (i, c) in NODES.iter().enumerate() {
        m.fails[i] = c.failcnt() as u32;
    }

    STORM.store(true, Ordering::Relaxed);
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();

    let mut iterations = 0u32;
    while iterations < ITERATIONS_MIN || get(&TICKS) < TICKS_MIN || get(&PREEMPTED) == 0 {
        assert!(
            iterations < ITERATIONS_MAX,
            "the storm did not end: {} ticks, {} inside a call",
            get(&TICKS),
            get(&PREEMPTED)
        );
        iterations += 1;
        m.step();
        if iterations % 32 == 0 {
            m.checkpoint();
        }
        if iterations % 500 == 0 {
            m.toggle_rx_limit();
        }
    }

    STORM.store(false, Ordering::Relaxed);
    syst.disable_interrupt();
    syst.disable_counter();
    m.checkpoint();
    hprintln!(
        "storm: {iterations} main iterations ({} charges, {} uncharges), {} SysTick ticks \
         ({} charges, {} uncharges, {} inside a main-loop call), {} checkpoints, \
         rx limit changed {} times and refused {} times",
        m.charges,
        m.uncharges,
        get(&TICKS),
        get(&ISR_CHARGES),
        get(&ISR_UNCHARGES),
        get(&PREEMPTED),
        m.checkpoints,
        m.limit_changes,
        m.limit_busy
    );
    m
}

fn settle(mut m: Main) {
    // SysTick is stopped: the handler's ledger is the main loop's to return.
    for e in &ISR_LEDGER {
        let entry = get(e);
        if entry != 0 {
            let (i, n) = ((entry >> 8) as usize, (entry & 0xff) as usize);
            NODES[i].uncharge(n);
            ISR_HELD[i].store(get(&ISR_HELD[i]) - n as u32, Ordering::Relaxed);
            e.store(0, Ordering::Relaxed);
        }
    }
    for entry in &mut m.ledger {
        if let Some((i, n)) = entry.take() {
            NODES[i].uncharge(n);
            m.held[i] -= n;
        }
    }
    let mut refusals = [0u32; N];
    for (i, c) in NODES.iter().enumerate() {
        assert_eq!((m.held[i], get(&ISR_HELD[i])), (0, 0));
        assert_eq!(c.usage(), 0, "{}: balanced", NAMES[i]);
        assert_eq!((c.underflows(), c.forgiven()), (0, 0), "{}: no uncharge was clamped", NAMES[i]);
        refusals[i] = m.fails[i] + get(&ISR_FAILS[i]);
        assert_eq!(c.failcnt(), refusals[i] as usize, "{}: fail count vs refusals seen", NAMES[i]);
        // RX's limit was 64 part of the time. SAMPLES has no limit of its own, but a charge
        // of it commits only within SENSORS' 72; its peak can still count a main-loop charge
        // of at most 8 that the handler interrupted between SAMPLES and SENSORS, and that
        // SENSORS then refused.
        let ceiling = match i {
            I_RX => RX_MAX_HIGH,
            I_SAMPLES => SENSORS.max() + 8,
            _ => c.max(),
        };
        assert!(c.peak() <= ceiling, "{}: peak {} above {ceiling}", NAMES[i], c.peak());
        assert!(c.peak() >= m.seen[i], "{}: peak {} below a usage seen, {}", NAMES[i], c.peak(), m.seen[i]);
    }
    let storm_refusals: u32 =
        refusals.iter().sum::<u32>() - 3 /* the boot's three */;
    assert!(storm_refusals > 0, "the storm asked for more than the limits allow");
    assert!(get(&ISR_CHARGES) > 0 && m.charges > 0);
    let mut out = Line::new();
    let _ = write!(out, "settle: every counter at 0, no clamp; refusals (= failcnt):");
    for i in 0..N {
        let _ = write!(out, " {} {}", NAMES[i], refusals[i]);
    }
    let _ = write!(out, "; peaks:");
    for i in 0..N {
        let _ = write!(out, " {} {}", NAMES[i], NODES[i].peak());
    }
    out.emit();
}

fn peaks() {
    let watcher = pin!(PeakWatcher::new(&RX));
    RX.reset_peak();
    watcher.as_ref().reset();
    assert_eq!((watcher.read(), RX.peak()), (0, 0));
    RX.try_charge(10).unwrap();
    RX.try_charge(20).unwrap();
    RX.uncharge(25);
    assert_eq!((RX.usage(), RX.peak(), watcher.read()), (5, 30, 30));
    // A global reset starts RX's peak again from 5; the watcher keeps its window's 30.
    RX.reset_peak();
    RX.try_charge(3).unwrap();
    assert_eq!((RX.peak(), RX.local_peak(), watcher.read()), (8, 8, 30));
    // The watcher's own reset starts its window from the usage, 8.
    watcher.as_ref().reset();
    RX.try_charge(2).unwrap();
    assert_eq!((watcher.read(), RX.peak()), (10, 10));
    RX.uncharge(10);
    assert_eq!((RX.usage(), RADIO.usage()), (0, 0));
    hprintln!("peaks: watcher windows and global resets as documented");
}

fn protection() {
    RX.try_charge(40).unwrap();
    TX.try_charge(30).unwrap();
    SAMPLES.try_charge(50).unwrap();
    // RADIO declares min 24, low 48 and uses 70; RX declares min 8, low 16 and uses 40;
    // TX declares nothing and uses 30.
    assert_eq!((RADIO.children_min_usage(), RADIO.children_low_usage()), (8, 16));
    let under = |c: &Counter<'static>, recursive| c.effective_protection_under(&BOARD, recursive).unwrap();
    // First level below the root: what it declares.
    assert_eq!(under(&RADIO, false), (24, 48));
    // Undercommitted (8 <= 24, 16 <= 48): each child keeps its own protected usage.
    assert_eq!(under(&RX, false), (8, 16));
    assert_eq!(under(&TX, false), (0, 0));
    assert_eq!(under(&SAMPLES, false), (0, 0));
    // Recursive: the parent's unclaimed 16 (min) and 32 (low) float down in proportion to
    // unprotected usage: RX min 8 + 16*32/62 = 16, low 16 + 32*24/54 = 30; TX min 16*30/62 = 7,
    // low 32*30/54 = 17.
    assert_eq!(under(&RX, true), (16, 30));
    assert_eq!(under(&TX, true), (7, 17));
    // The stateful top-down walk agrees.
    for c in [&RADIO, &RX, &TX] {
        c.calculate_protection(&BOARD, true);
    }
    assert_eq!((RX.effective_min(), RX.effective_low(), TX.effective_low()), (16, 30, 17));
    // Overcommitted: RADIO's low drops to 40, TX claims 40 (uses 30): the children claim
    // 16 + 30 = 46 > 40, split by used protection: RX 16*40/46 = 13, TX 30*40/46 = 26.
    RADIO.set_low(40).unwrap();
    TX.set_low(40).unwrap();
    assert_eq!(RADIO.children_low_usage(), 46);
    assert_eq!(under(&RX, false).1, 13);
    assert_eq!(under(&TX, false).1, 26);
    TX.set_low(0).unwrap();
    RADIO.set_low(48).unwrap();
    RX.uncharge(40);
    TX.uncharge(30);
    SAMPLES.uncharge(50);
    for (i, c) in NODES.iter().enumerate() {
        assert_eq!(c.usage(), 0, "{}", NAMES[i]);
        assert_eq!((c.min_usage(), c.low_usage()), (0, 0), "{}", NAMES[i]);
    }
    assert_eq!(
        (RADIO.children_min_usage(), RADIO.children_low_usage(), BOARD.children_low_usage()),
        (0, 0, 0)
    );
    hprintln!("protection: effective min/low as computed by hand (plain, recursive, overcommitted)");
}

#[entry]
fn main() -> ! {
    let mut core = cortex_m::Peripherals::take().expect("taken once");
    hprintln!("chargetree counter storm on {}", BOARD_NAME);
    boot();
    let m = storm(&mut core.SYST);
    settle(m);
    peaks();
    protection();
    hprintln!("PASS");
    debug::exit(debug::EXIT_SUCCESS);
    loop {
        cortex_m::asm::wfi();
    }
}

#[cfg(target_has_atomic = "32")]
const BOARD_NAME: &str = "Cortex-M4F (thumbv7em-none-eabihf, native atomics)";
#[cfg(not(target_has_atomic = "32"))]
const BOARD_NAME: &str = "Cortex-M0 (thumbv6m-none-eabi, atomics via critical sections)";

// ---------------------------------------------------------------------------------------------
// Reporting.

/// One line of output built without a heap, written with one semihosting call.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Self { buf: [0; 256], len: 0 }
    }

    fn emit(&mut self) {
        if self.len < self.buf.len() {
            self.buf[self.len] = b'\n';
            self.len += 1;
        }
        if let Ok(mut out) = hio::hstdout() {
            let _ = out.write_all(&self.buf[..self.len]);
        }
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - 1 - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    cortex_m::interrupt::disable();
    hprintln!("FAIL: {}", info);
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    hprintln!("FAIL: hard fault at pc {:#010x}", frame.pc());
    debug::exit(debug::EXIT_FAILURE);
    loop {
        cortex_m::asm::wfi();
    }
}
