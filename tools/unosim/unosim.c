/*
 * unosim - a virtual Arduino UNO: simavr's ATmega328P with UART0 behind a pseudo-terminal.
 *
 *   unosim [--link PATH] [--realtime] [--mcu NAME] [--freq HZ] [--bootloader HEX] [-v] [FIRMWARE.elf]
 *
 * Prints the pty slave path (one line) on stdout, then behaves like a UNO on a USB port:
 *  - Opening the port resets the MCU (a real UNO's DTR reset). Nobody has it open: the MCU is
 *    paused, because its output would be lost and the next open resets it anyway.
 *  - Host->AVR bytes are held until the firmware can take them (receiver on, simavr's RX fifo not
 *    full, tracked through the UART's XON/XOFF IRQs) and never dropped: once our buffer is full
 *    we stop reading the pty, so the client's write() blocks, like hardware flow control.
 *  - AVR->host bytes are buffered; if the client stops reading, the simulation stalls.
 *  - Default speed is "as fast as possible"; --realtime paces to the wall clock.
 *  - --bootloader HEX (e.g. Debian's optiboot) goes into flash beside the firmware and every reset
 *    starts it, as the BOOTRST fuse does: opening the port gives it a second to hear from avrdude
 *    before it starts the firmware, and it writes what avrdude sends with SPM. While the PC is in
 *    the bootloader the simulation keeps to the wall clock, because its timeout is the watchdog's
 *    simulated second and avrdude's waits are real ones. With no FIRMWARE.elf flash starts erased.
 *
 * Known simavr 1.6 behaviour to keep in mind when reading cycle counts or UART timing:
 *  - Interrupt entry is charged 4 cycles short (silicon spends 4 cycles pushing the PC before the
 *    vector's JMP; simavr charges nothing), so ISR-heavy code measures slightly fast. Straight-line
 *    code timed with Timer1 at prescaler 1 is exact.
 *  - The UART reads U2X only when UBRR0L is written: firmware must set U2X0 before UBRR0L.
 *  - TX is modelled with 11-bit frames (one parity bit always counted), +10% vs silicon; RX never
 *    overruns (a 64-byte fifo where silicon has 2-3 bytes).
 *  - SLEEP with interrupts disabled makes simavr end the run (cpu_Done); we treat that as the MCU
 *    hanging until the next reset, as silicon would.
 *  - Reading or writing data memory above RAMEND, or running off the end of flash, "crashes" the
 *    core; we exit with an error (invalid opcodes are only logged).
 *
 * Build: see Makefile (gcc ... $(pkg-config --cflags --libs simavr); openpty is in glibc >= 2.34,
 * -lutil keeps older systems working).
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "sim_avr.h"
#include "sim_elf.h"
#include "sim_hex.h"
#include "sim_io.h"
#include "avr_uart.h"

#define NS 1000000000ull
#define SERVICE_CYCLES 4096         /* pty serviced every 256 us of simulated time at 16 MHz */
#define IN_CAP 4096                 /* host->AVR bytes we hold; beyond that the kernel holds them */
#define OUT_CAP 65536               /* AVR->host bytes we hold */
#define OUT_HIGH (OUT_CAP / 2)      /* above this the MCU stalls until the client reads */
#define WAIT_NS (10 * 1000000ull)   /* longest single blocking wait */
#define SETTLE_NS (50 * 1000000ull) /* opened port, but no input flush seen: reset after this */
#define MAX_LAG_NS (50 * 1000000ull)/* --realtime: don't sprint to make up more lag than this */

enum { PORT_CLOSED, PORT_OPENING, PORT_OPEN };

static struct {
	avr_t *avr;
	avr_irq_t *uart_irq;
	avr_uart_t *uart;
	uint32_t freq;
	int realtime, verbose;
	avr_flashaddr_t boot_start; /* first byte of the bootloader, 0 without one */
	int pacing;                 /* the run is being held to the wall clock */
	int master, ino, parent;
	char slave[PATH_MAX];
	const char *link;
	int port, clients, booted, halted, client_flushed;
	uint64_t opened_ns;
	int rx_ready, io_pending;
	uint8_t in[IN_CAP];
	size_t in_off, in_len;
	uint8_t out[OUT_CAP];
	size_t out_len;
	uint64_t rt_ns;
	avr_cycle_count_t rt_cycle;
} g;

static volatile sig_atomic_t g_stop;

static void remove_link(void);
static int paced(void);

static void on_signal(int sig) { (void)sig; g_stop = 1; }

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * NS + (uint64_t)t.tv_nsec;
}

/* split so that neither product overflows 64 bits, however long the run */
static uint64_t cyc_to_ns(uint64_t c) { return c / g.freq * NS + c % g.freq * NS / g.freq; }
static uint64_t ns_to_cyc(uint64_t n) { return n / NS * g.freq + n % NS * g.freq / NS; }

static void die(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("unosim: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	remove_link();
	exit(code);
}

static void logger(avr_t *avr, const int level, const char *fmt, va_list ap)
{
	(void)avr;
	if (level > LOG_ERROR + g.verbose)
		return;
	fputs("unosim: simavr: ", stderr);
	vfprintf(stderr, fmt, ap);
}

/* ---- UART side: simavr IRQ hooks (keep these tiny: they run inside avr_run) ---- */

static void on_uart_out(avr_irq_t *irq, uint32_t value, void *param)
{
	(void)irq; (void)param;
	if (g.port == PORT_OPEN && g.out_len < OUT_CAP)
		g.out[g.out_len++] = (uint8_t)value;
}

/* XON is raised (repeatedly) while the receiver is on and its fifo is empty; XOFF when the fifo
 * fills or the receiver is switched off. */
static void on_xon(avr_irq_t *irq, uint32_t value, void *param)
{
	(void)irq; (void)param;
	if (value)
		g.rx_ready = 1;
}

static void on_xoff(avr_irq_t *irq, uint32_t value, void *param)
{
	(void)irq; (void)param;
	if (value)
		g.rx_ready = 0;
}

/* Push held bytes into the UART. Called from the main loop, never from a simavr callback. */
static void feed_uart(void)
{
	/* simavr silently discards input while RXEN is off; the IRQ bookkeeping should prevent that,
	 * the register check makes sure of it */
	while (g.rx_ready && g.in_len && avr_regbit_get(g.avr, g.uart->rxen)) {
		g.in_len--;
		avr_raise_irq(g.uart_irq + UART_IRQ_INPUT, g.in[g.in_off++]);
	}
	if (!g.in_len)
		g.in_off = 0;
}

/* ---- pty side ---- */

static void drain_pty(void)
{
	uint8_t junk[512];
	while (read(g.master, junk, sizeof junk) > 0)
		;
}

static void read_pty(void)
{
	uint8_t pkt[1 + IN_CAP];
	if (g.in_off) {
		memmove(g.in, g.in + g.in_off, g.in_len);
		g.in_off = 0;
	}
	size_t room = IN_CAP - g.in_len;
	if (!room)
		return;
	/* packet mode (TIOCPKT): the first byte says whether data or a status change follows */
	ssize_t n = read(g.master, pkt, room + 1);
	if (n <= 0)
		return;
	if (pkt[0] != TIOCPKT_DATA) {
		if (pkt[0] & TIOCPKT_FLUSHREAD)
			g.client_flushed = 1;
		return;
	}
	memcpy(g.in + g.in_len, pkt + 1, (size_t)n - 1);
	g.in_len += (size_t)n - 1;
}

static void write_pty(void)
{
	ssize_t n = write(g.master, g.out, g.out_len);
	if (n > 0) {
		memmove(g.out, g.out + n, g.out_len - (size_t)n);
		g.out_len -= (size_t)n;
	}
}

static void enter_closed(void)
{
	g.port = PORT_CLOSED;
	g.out_len = g.in_len = g.in_off = 0;
	drain_pty(); /* whatever the last client wrote but we did not read is stale now */
}

static void enter_opening(void)
{
	g.port = PORT_OPENING;
	g.opened_ns = now_ns();
	g.out_len = g.in_len = g.in_off = 0;
	g.client_flushed = 0;
}

/* The client is set up: reset the MCU (from the main loop; avr_reset inside a simavr callback
 * crashed) and let it run. */
static void start_session(void)
{
	/* pyserial flushes its input right after open(); resetting only after that flush (or once
	 * the client writes, or after SETTLE_NS) keeps the boot banner from being flushed away */
	tcflush(g.master, TCOFLUSH);
	/* with a bootloader even the first open is a reset: the board was powered before the port was opened,
	 * and the bootloader only waits for avrdude after an external reset */
	if (g.booted || g.boot_start) {
		avr_reset(g.avr); /* keeps SRAM (.noinit survives), clears I/O registers */
		if (g.avr->reset_flags.extrf.reg)
			avr_regbit_set(g.avr, g.avr->reset_flags.extrf);
	}
	g.booted = 1;
	g.halted = 0;
	g.rx_ready = 0; /* reset turned the receiver off without an XOFF */
	g.out_len = 0;
	g.port = PORT_OPEN;
	g.rt_ns = now_ns();
	g.rt_cycle = g.avr->cycle;
	g.pacing = paced();
}

/* inotify on the slave counts opens and closes exactly, even a close+reopen faster than we poll
 * (the master's POLLHUP only shows the current state, and only while nobody has the port open) */
static void read_inotify(void)
{
	char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
	ssize_t len = read(g.ino, buf, sizeof buf);
	int new_session = 0;
	for (char *p = buf; len > 0 && p < buf + len;) {
		struct inotify_event *ev = (struct inotify_event *)p;
		p += sizeof *ev + ev->len;
		if (ev->mask & IN_Q_OVERFLOW) { /* lost count: trust the master's HUP instead */
			struct pollfd pf = { .fd = g.master, .events = POLLIN };
			poll(&pf, 1, 0);
			g.clients = !(pf.revents & POLLHUP);
			new_session = g.clients;
		}
		if ((ev->mask & IN_OPEN) && g.clients++ == 0)
			new_session = 1;
		if ((ev->mask & IN_CLOSE) && g.clients > 0)
			g.clients--;
	}
	if (g.clients == 0) {
		if (g.port != PORT_CLOSED)
			enter_closed();
	} else if (new_session) {
		enter_opening();
	}
}

/* A launcher that gives us a pipe as stdin (unochat.sim does) never writes to it: end of file
 * means the launcher died without stopping us, so don't linger as an orphan. */
static void check_parent(void)
{
	char junk[64];
	if (read(g.parent, junk, sizeof junk) == 0) {
		fprintf(stderr, "unosim: launcher closed our stdin; exiting\n");
		g_stop = 1;
		g.parent = -1;
	}
}

/* Wait up to timeout_ns for pty activity, then move bytes both ways and follow the client. */
static void service(uint64_t timeout_ns)
{
	/* a closed slave makes the master report POLLHUP at once, so only poll it while a client
	 * has it open (poll ignores negative fds); and only ask for input we have room for */
	struct pollfd p[3] = {
		{ .fd = g.ino, .events = POLLIN },
		{ .fd = g.port == PORT_CLOSED ? -1 : g.master,
		  .events = (g.in_len < IN_CAP ? POLLIN : 0) | (g.out_len ? POLLOUT : 0) },
		{ .fd = g.parent, .events = POLLIN },
	};
	struct timespec ts = { (time_t)(timeout_ns / NS), (long)(timeout_ns % NS) };
	if (ppoll(p, 3, &ts, NULL) < 0)
		return; /* EINTR: a signal; the caller checks g_stop */
	if (p[2].revents)
		check_parent();
	if (p[0].revents & POLLIN)
		read_inotify();
	if (p[1].revents & POLLHUP) { /* should not happen while inotify says open */
		g.clients = 0;
		enter_closed();
		return;
	}
	if (p[1].revents & POLLIN)
		read_pty();
	if (g.out_len && (p[1].revents & POLLOUT))
		write_pty();
	if (g.port == PORT_OPENING &&
	    (g.client_flushed || g.in_len || now_ns() - g.opened_ns > SETTLE_NS))
		start_session();
}

/* --realtime, or in the bootloader: hold the simulation back until the wall clock catches up */
static int paced(void)
{
	return g.realtime || (g.boot_start && g.avr->pc >= g.boot_start);
}

static void pace(void)
{
	if (!g.pacing) { /* fast until now: the simulated clock is far ahead, start counting afresh */
		g.pacing = 1;
		g.rt_ns = now_ns();
		g.rt_cycle = g.avr->cycle;
		return;
	}
	uint64_t due = g.rt_ns + cyc_to_ns(g.avr->cycle - g.rt_cycle), now = now_ns();
	if (now > due + MAX_LAG_NS) { /* host was busy or we stalled on output: forget the debt */
		g.rt_ns = now;
		g.rt_cycle = g.avr->cycle;
	} else if (due > now) {
		service(due - now);
	}
}

/*
 * Replaces simavr's default sleep callback, which usleep()s to match the wall clock. simavr calls
 * it while the firmware executes SLEEP, with how_long = cycles until the next cycle timer (1000 if
 * none), and afterwards adds 1 + how_long to avr->cycle. We block on the pty instead of spinning,
 * and adjust avr->cycle so that the net advance is what we actually slept:
 *  - nothing scheduled at all (only input can wake the MCU): block up to WAIT_NS, map elapsed
 *    wall time to cycles;
 *  - --realtime, or the receiver is on (the firmware waits for the host): block until the next
 *    timer is due in wall time, waking early if the pty becomes readable;
 *  - otherwise (fast mode, nothing to wait for): skip the idle time at once.
 * Input already held for the UART wakes it immediately so the main loop can feed it.
 */
static void on_sleep(avr_t *avr, avr_cycle_count_t how_long)
{
	uint64_t budget, advance = how_long;
	int idle = avr->cycle_timers.timer == NULL;
	if (g.rx_ready && g.in_len) {
		advance = 0;
		goto done;
	}
	if (g.out_len)
		write_pty(); /* what the firmware just sent must not wait out our nap */
	if (idle)
		budget = WAIT_NS;
	else if (paced()) {
		uint64_t due = g.rt_ns + cyc_to_ns(avr->cycle + how_long - g.rt_cycle), now = now_ns();
		budget = due > now ? due - now : 0;
	} else if (g.rx_ready && !g.uart->tx_cnt)
		budget = cyc_to_ns(how_long); /* not waiting for a TX to finish: waiting for the host */
	else
		budget = 0;
	if (budget) {
		struct pollfd p[3] = { { .fd = g.ino, .events = POLLIN },
			{ .fd = g.master, .events = (g.in_len < IN_CAP ? POLLIN : 0) |
						    (g.out_len ? POLLOUT : 0) },
			{ .fd = g.parent, .events = POLLIN } };
		struct timespec ts = { (time_t)(budget / NS), (long)(budget % NS) };
		uint64_t t0 = now_ns();
		int n = ppoll(p, 3, &ts, NULL);
		uint64_t slept = ns_to_cyc(now_ns() - t0);
		if (n != 0)
			g.io_pending = 1; /* input, open/close or a signal: let the main loop look */
		if (idle)
			advance = slept;
		else if (n != 0 && slept < how_long)
			advance = slept;
	}
done:
	avr->cycle += advance - how_long; /* unsigned wrap-around is intended: net += 1 + advance */
}

/* Before exiting on a crash: closing the master hangs up the slave, which discards what the
 * client has not read yet. Give it up to 2 s to read the firmware's last words. */
static void linger(void)
{
	uint64_t end = now_ns() + 2 * NS;
	while (g.out_len && g.port == PORT_OPEN && now_ns() < end)
		service(WAIT_NS);
	int fd = g.port == PORT_OPEN ? open(g.slave, O_RDWR | O_NOCTTY | O_NONBLOCK) : -1;
	/* The kernel moves what we wrote to the slave's queue asynchronously, so an empty queue
	 * counts only once it has stayed empty for 50 ms. */
	uint64_t empty_since = now_ns();
	int queued = 0;
	while (fd >= 0 && ioctl(fd, FIONREAD, &queued) == 0 && now_ns() < end) {
		if (queued > 0)
			empty_since = now_ns();
		else if (now_ns() - empty_since > NS / 20)
			break;
		usleep(1000);
	}
	if (fd >= 0)
		close(fd);
}

/* ---- setup ---- */

static void check_elf(const char *path)
{
	Elf32_Ehdr h;
	int fd = open(path, O_RDONLY);
	if (fd < 0)
		die(2, "cannot open firmware %s: %s", path, strerror(errno));
	ssize_t n = read(fd, &h, sizeof h);
	close(fd);
	if (n != (ssize_t)sizeof h || memcmp(h.e_ident, ELFMAG, SELFMAG) != 0)
		die(2, "%s is not an ELF file", path);
	if (h.e_machine != EM_AVR)
		die(2, "%s is not an AVR ELF (e_machine %d)", path, h.e_machine);
}

/* simavr 1.6's loader places .data right after .text in flash, ignoring its load address. That is
 * what avr-gcc's linker scripts produce, but if they ever differ the startup code would copy
 * garbage into initialized globals: move .data to where __data_load_start says it is. */
static void place_data(elf_firmware_t *fw)
{
	uint32_t text = fw->flashsize - fw->datasize;
	for (uint32_t i = 0; fw->datasize && i < fw->symbolcount; i++) {
		avr_symbol_t *s = fw->symbol[i];
		if (strcmp(s->symbol, "__data_load_start") || s->addr == fw->flashbase + text)
			continue;
		uint32_t at = s->addr - fw->flashbase, size = at + fw->datasize;
		if (at < text || size > (1u << 22))
			die(2, "cannot place .data at 0x%x (__data_load_start)", s->addr);
		uint8_t *flash = malloc(size);
		if (!flash)
			die(1, "out of memory");
		memset(flash, 0xff, size);
		memcpy(flash, fw->flash, text);
		memcpy(flash + at, fw->flash + text, fw->datasize);
		free(fw->flash);
		fw->flash = flash;
		fw->flashsize = size;
		fprintf(stderr, "unosim: note: .data loaded at 0x%x, not right after .text\n", s->addr);
		break;
	}
}

/* Put a bootloader's image into flash and make every reset start it (the UNO's BOOTRST fuse). */
static void load_bootloader(const char *path, uint32_t app_end)
{
	ihex_chunk_p chunks;
	int n = read_ihex_chunks(path, &chunks);
	if (n <= 0)
		die(2, "cannot read bootloader %s (Intel hex)", path);
	uint32_t start = UINT32_MAX;
	for (int i = 0; i < n; i++) {
		if (!chunks[i].size)
			continue;
		if (chunks[i].baseaddr + chunks[i].size > g.avr->flashend + 1)
			die(2, "bootloader %s reaches 0x%x, past the end of flash (0x%x)", path,
			    chunks[i].baseaddr + chunks[i].size, g.avr->flashend + 1);
		memcpy(g.avr->flash + chunks[i].baseaddr, chunks[i].data, chunks[i].size);
		if (chunks[i].baseaddr < start)
			start = chunks[i].baseaddr;
	}
	free_ihex_chunks(chunks);
	if (start == UINT32_MAX)
		die(2, "bootloader %s is empty", path);
	if (app_end > start)
		die(2, "the firmware (%u bytes) overlaps the bootloader at 0x%x", app_end, start);
	g.boot_start = start;
	g.avr->reset_pc = start;
	g.avr->pc = start;
	g.avr->codeend = g.avr->flashend; /* code runs in both the firmware and the bootloader */
}

static void make_link(void)
{
	struct stat st;
	char tmp[PATH_MAX];
	if (lstat(g.link, &st) == 0 && !S_ISLNK(st.st_mode))
		die(1, "--link %s exists and is not a symlink; not replacing it", g.link);
	snprintf(tmp, sizeof tmp, "%s.%d.tmp", g.link, (int)getpid());
	unlink(tmp);
	if (symlink(g.slave, tmp) != 0 || rename(tmp, g.link) != 0) {
		int e = errno;
		unlink(tmp);
			die(1, "cannot create symlink %s: %s", g.link, strerror(e));
	}
}

static void remove_link(void)
{
	char target[PATH_MAX];
	ssize_t n = g.link ? readlink(g.link, target, sizeof target - 1) : -1;
	if (n > 0) {
		target[n] = 0;
		if (!strcmp(target, g.slave)) /* don't remove a link someone else re-pointed */
			unlink(g.link);
	}
}

static void usage(FILE *f)
{
	fputs("usage: unosim [options] FIRMWARE.elf\n"
	      "Run an AVR firmware in simavr with UART0 on a pseudo-terminal; prints the pty path.\n"
	      "Opening the port resets the MCU, like a UNO's DTR reset.\n"
	      "  --link PATH   also create symlink PATH -> pty (removed on exit)\n"
	      "  --realtime    pace the simulation to the wall clock (default: as fast as possible)\n"
	      "  --mcu NAME    MCU (default: the ELF's .mmcu section, else atmega328p)\n"
	      "  --freq HZ     clock (default: the ELF's .mmcu section, else 16000000)\n"
	      "  --bootloader HEX  a bootloader image in flash that every reset starts (BOOTRST);\n"
	      "                the simulation keeps to the wall clock while it runs\n"
	      "  -v            more simavr log output (repeat for more)\n"
	      "  -h, --help    this help\n"
	      "Stops on SIGTERM/SIGINT, or at end of file on stdin if stdin is a pipe.\n"
	      "Exit: 0 when stopped, 1 setup error, 2 firmware not loadable, 3 firmware crashed.\n",
	      f);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "link", required_argument, 0, 'l' }, { "realtime", no_argument, 0, 'r' },
		{ "mcu", required_argument, 0, 'm' },  { "freq", required_argument, 0, 'f' },
		{ "bootloader", required_argument, 0, 'b' },
		{ "help", no_argument, 0, 'h' },       { 0, 0, 0, 0 } };
	const char *mcu = NULL, *bootloader = NULL;
	unsigned long freq = 0;
	int c;
	while ((c = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
		switch (c) {
		case 'l': g.link = optarg; break;
		case 'r': g.realtime = 1; break;
		case 'm': mcu = optarg; break;
		case 'f':
			freq = strtoul(optarg, NULL, 0);
			if (freq < 1000 || freq > 100000000)
				die(1, "bad --freq %s", optarg);
			break;
		case 'b': bootloader = optarg; break;
		case 'v': g.verbose++; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (optind != argc - 1 && !(bootloader && optind == argc)) {
		usage(stderr);
		return 1;
	}
	const char *elf = optind < argc ? argv[optind] : NULL;
	avr_global_logger_set(logger);

	/* firmware */
	elf_firmware_t fw;
	memset(&fw, 0, sizeof fw);
	if (elf) {
		check_elf(elf);
		if (elf_read_firmware(elf, &fw) != 0 || fw.flashsize == 0)
			die(2, "cannot load firmware from %s (no .text?)", elf);
		place_data(&fw);
	}
	/* command-line values win; then the ELF's .mmcu section; then the UNO's */
	if (!mcu)
		mcu = fw.mmcu[0] ? fw.mmcu : "atmega328p";
	g.freq = freq ? (uint32_t)freq : fw.frequency ? fw.frequency : 16000000;
	g.avr = avr_make_mcu_by_name(mcu);
	if (!g.avr)
		die(1, "unknown MCU '%s'", mcu);
	if (fw.flashbase + fw.flashsize > g.avr->flashend + 1) /* simavr would abort() */
		die(2, "%s: %u bytes of flash image, %s has %u", elf, fw.flashbase + fw.flashsize,
		    mcu, g.avr->flashend + 1);
	avr_init(g.avr);
	fw.frequency = g.freq;
	if (elf)
		avr_load_firmware(g.avr, &fw);
	g.avr->frequency = g.freq;
	if (bootloader)
		load_bootloader(bootloader, fw.flashbase + fw.flashsize);
	g.avr->sleep = on_sleep;

	/* UART0 */
	g.uart_irq = avr_io_getirq(g.avr, AVR_IOCTL_UART_GETIRQ('0'), 0);
	for (avr_io_t *io = g.avr->io_port; io; io = io->next)
		if (io->irq_ioctl_get == AVR_IOCTL_UART_GETIRQ('0'))
			g.uart = (avr_uart_t *)io; /* avr_io_t is the first member */
	if (!g.uart_irq || !g.uart)
		die(1, "MCU %s has no UART0", mcu);
	/* default flags print the output as log lines and usleep(1) on every idle UCSR0A poll */
	uint32_t flags = 0;
	avr_ioctl(g.avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
	avr_irq_register_notify(g.uart_irq + UART_IRQ_OUTPUT, on_uart_out, NULL);
	avr_irq_register_notify(g.uart_irq + UART_IRQ_OUT_XON, on_xon, NULL);
	avr_irq_register_notify(g.uart_irq + UART_IRQ_OUT_XOFF, on_xoff, NULL);

	/* pty: raw on the slave (the settings outlive our fd), packet mode on the master so we
	 * see the client's input flush, then close our slave fd so only clients hold it open */
	int slave;
	struct termios tio;
	if (openpty(&g.master, &slave, g.slave, NULL, NULL) != 0)
		die(1, "openpty: %s", strerror(errno));
	tcgetattr(slave, &tio);
	cfmakeraw(&tio);
	tcsetattr(slave, TCSANOW, &tio);
	tcgetattr(g.master, &tio);
	cfmakeraw(&tio);
	tcsetattr(g.master, TCSANOW, &tio);
	int one = 1;
	if (ioctl(g.master, TIOCPKT, &one) != 0)
		die(1, "TIOCPKT: %s", strerror(errno));
	fcntl(g.master, F_SETFL, fcntl(g.master, F_GETFL) | O_NONBLOCK);
	close(slave);
	g.ino = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	if (g.ino < 0 || inotify_add_watch(g.ino, g.slave, IN_OPEN | IN_CLOSE) < 0)
		die(1, "inotify on %s: %s", g.slave, strerror(errno));
	g.port = PORT_CLOSED;
	struct stat st;
	g.parent = fstat(STDIN_FILENO, &st) == 0 && S_ISFIFO(st.st_mode) ? STDIN_FILENO : -1;
	if (g.link)
		make_link();

	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal; /* no SA_RESTART: waits return early with EINTR */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	printf("%s\n", g.slave);
	fflush(stdout);
	/* the launcher reads only that line; anything later (simavr prints to stdout in places)
	 * goes to stderr so a full, unread stdout pipe can never block us */
	dup2(STDERR_FILENO, STDOUT_FILENO);

	int rc = 0;
	while (!g_stop) {
		if (g.port != PORT_OPEN || g.halted) {
			service(WAIT_NS);
			continue;
		}
		service(0);
		if (paced())
			pace();
		else
			g.pacing = 0;
		while (g.out_len >= OUT_HIGH && g.port == PORT_OPEN && !g_stop)
			service(WAIT_NS); /* client isn't reading: stall rather than drop output */
		avr_cycle_count_t until = g.avr->cycle + SERVICE_CYCLES;
		g.io_pending = 0;
		while (g.port == PORT_OPEN && g.avr->cycle < until && !g.io_pending) {
			if (g.rx_ready && g.in_len)
				feed_uart();
			int st = avr_run(g.avr);
			if (st == cpu_Running || st == cpu_Sleeping)
				continue;
			if (st == cpu_Done) {
				fprintf(stderr, "unosim: firmware executed SLEEP with interrupts disabled at "
					"PC 0x%04x; MCU halted until the port is reopened\n", g.avr->pc);
				g.halted = 1;
				break;
			}
			fprintf(stderr, "unosim: firmware crashed at PC 0x%04x (byte address), cycle %llu; "
				"simavr stopped the core (state %d)\n", g.avr->pc,
				(unsigned long long)g.avr->cycle, st);
			linger();
			rc = 3;
			g_stop = 1;
			break;
		}
	}
	remove_link();
	close(g.master);
	return rc;
}
