/* unochat firmware: a chat model on an Arduino UNO.
 *
 * Serial at 115200 8N1. A line (ended by CR, LF or CRLF) is a chat query; the reply is printed
 * character by character as it is generated, then CRLF. A line whose first byte is '!' is a machine
 * command (README, "Serial protocol"):
 *   !s<token>      sync: echoes "!s<token>", so a host can find the start of fresh output
 *   !i             model and firmware info
 *   !t <query>     "!t step=<c,...> query=<c> total=<c> layers=<c,...> ctx=<c> argmax=<c> rq=<c>
 *                  n=<chars> reply=<reply>" with Timer1 cycles per step (the last one finds EOS), for
 *                  the query (its features and the model's per-reply work), in all, and summed over the
 *                  steps: per layer, for the context features, for the argmax, and for requantization
 *                  (0 unless the model was exported to profile it; then not in the layers' counts)
 *   !x <hex>       logits of a raw input vector (2 hex digits per input): "!x <l0>,<l1>,..."
 *   !p             cycles per layer of the last !x: "!p layers=<c,...>"
 *   !m             free SRAM now and the least free SRAM since reset (stack high-water mark)
 *   !u <text>      writes <text> back as a chat's reply goes out, a character at a time:
 *                  "!u <text> cycles=<c> n=<chars>", the Timer1 cycles of those writes
 *   !h             echo on/off, for a person in a terminal that does not show what it sends (picocom,
 *                  screen): typed characters are written back, backspace erases, "> " asks for the next
 *                  line. Off after reset, so the Serial Monitor and the host client see answers only.
 * The letter after '!' names the command; one space after it is a separator, the rest of the line
 * is the argument, edited like a chat line (so "!t <query>" times exactly the chat line "<query>").
 * Errors come back as "!e <reason>". Bytes are handled as they arrive: a line longer than the buffers
 * is cut, never overflows; binary bytes are dropped by the line editor. While a reply is generated,
 * received bytes wait in the Arduino core's 64-byte buffer (63 usable) and what does not fit is lost
 * (no flow control on a UNO): a host sends one request and waits for its answer.
 * At reset the firmware writes one line for a person (START_LINE); `!i` is the machine's.
 * The model itself is generated into firmware/generated/ by `unochat export`. */
#include <Arduino.h>
#include <avr/sleep.h>

#include "unochat_model.h" /* firmware/generated/, on the include path (platformio.ini) */

/* ---- UART: USART0 at 115200 8N1 ---------------------------------------------------------------------
 * Our own few lines instead of the Arduino core's Serial (HardwareSerial and Print: about 1.2 KB of flash
 * and 157 B of SRAM): received bytes go into a 64-byte ring (63 usable, as the core's), bytes to send
 * are written straight into the data register once it is empty. So no transmit interrupt ever lands in
 * a timed step, and a character of a reply costs the wait for the previous one only if generation
 * outruns the line (87 us a byte). */
#define RX_SIZE 64
static volatile uint8_t rx_ring[RX_SIZE];
static volatile uint8_t rx_head, rx_tail;

#ifdef USART0_RX_vect /* the ATmega2560 numbers its four USARTs */
#define USART_RX_vect USART0_RX_vect
#endif

ISR(USART_RX_vect)
{
    uint8_t byte = UDR0, next = (uint8_t)((rx_head + 1) & (RX_SIZE - 1));
    if (next != rx_tail) { /* a full ring drops the byte, as the core's does */
        rx_ring[rx_head] = byte;
        rx_head = next;
    }
}

static void uart_begin()
{
    UCSR0A = _BV(U2X0); /* before UBRR0: 16 MHz / 8 / (16 + 1) = 117,647 baud, 2.1% off 115,200 */
    UBRR0 = 16;
    UCSR0C = _BV(UCSZ01) | _BV(UCSZ00);
    UCSR0B = _BV(RXEN0) | _BV(TXEN0) | _BV(RXCIE0);
}

static bool uart_available() { return rx_head != rx_tail; }

static uint8_t uart_read()
{
    uint8_t byte = rx_ring[rx_tail];
    rx_tail = (uint8_t)((rx_tail + 1) & (RX_SIZE - 1));
    return byte;
}

static bool sent; /* simavr raises UDRE0 only once a byte went out (silicon sets it at reset) */

static void put(uint8_t byte)
{
    if (sent)
        while (!(UCSR0A & _BV(UDRE0))) {}
    UDR0 = byte;
    sent = true;
}

static void put_P(const char *text) /* a string in program memory (PSTR) */
{
    for (uint8_t c; (c = pgm_read_byte(text)); text++) put(c);
}

static void put_u32(uint32_t v)
{
    char digits[10];
    uint8_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) put(digits[--n]);
}

static void put_i32(int32_t v)
{
    if (v < 0) put('-');
    put_u32(v < 0 ? 0u - (uint32_t)v : (uint32_t)v); /* INT32_MIN too */
}

static void newline()
{
    put('\r');
    put('\n');
}

/* ---- cycle counter: Timer1 at the CPU clock, extended to 32 bits by its overflow interrupt -------- */
static volatile uint16_t timer1_overflows;

ISR(TIMER1_OVF_vect) { timer1_overflows++; }

static void cycles_begin()
{
    TCCR1A = 0; /* the Arduino core sets Timer1 up for PWM; we need a plain counter */
    TCCR1B = _BV(CS10);
    TCNT1 = 0;
    TIFR1 = _BV(TOV1);
    TIMSK1 = _BV(TOIE1);
}

/* Inlined into the profile calls, and the halves put together through a union: those calls run
 * inside the timed step, so their own cycles count as the model's. */
static inline __attribute__((always_inline)) uint32_t read_cycles()
{
    uint8_t sreg = SREG;
    cli();
    union {
        struct {
            uint16_t low, high;
        } half;
        uint32_t all;
    } now;
    now.half.low = TCNT1;
    now.half.high = timer1_overflows;
    /* an overflow that happened after cli() is pending, not yet counted */
    if ((TIFR1 & _BV(TOV1)) && now.half.low < 0x8000) now.half.high++;
    SREG = sreg;
    return now.all;
}

static uint32_t cycles() { return read_cycles(); }

/* ---- profile: the generated C calls this between layers (and around the context features and the
 * argmax of a step) when UNOCHAT_PROFILE is set; slots are named in unochat_model.h ---------------- */
static uint32_t layer_cycles[UNOCHAT_PROFILE_SLOTS];
static uint32_t layer_mark;

extern "C" void unochat_profile_layer(uint8_t layer)
{
    uint32_t now = read_cycles();
    uint32_t spent = now - layer_mark;
    layer_mark = now;
    layer_cycles[layer] += spent;
}

extern "C" void unochat_profile_start() { layer_mark = read_cycles(); }

/* ---- stack high-water mark: paint free SRAM at boot, later find how far the stack reached -------- */
extern uint8_t __heap_start;
extern char *__brkval;
static const uint8_t PAINT = 0xA5;

static uint8_t *heap_end() { return __brkval ? (uint8_t *)__brkval : &__heap_start; }

static void paint_stack()
{
    uint8_t here;
    for (uint8_t *p = heap_end(); p < &here - 32; p++) *p = PAINT;
}

static uint16_t free_now()
{
    uint8_t here;
    return (uint16_t)(&here - heap_end());
}

static uint16_t free_least()
{
    uint8_t *p = heap_end();
    while (p < (uint8_t *)RAMEND && *p == PAINT) p++;
    return (uint16_t)(p - heap_end());
}

/* ---- output ------------------------------------------------------------------------------------- */
static void print_info()
{
    put_P(PSTR("!i unochat=" UNOCHAT_VERSION " "));
    put_P(unochat_model_info);
    put_P(PSTR(" inputs="));
    put_u32(UNOCHAT_N_INPUTS);
    put_P(PSTR(" outputs="));
    put_u32(UNOCHAT_N_OUTPUTS);
    put_P(PSTR(" max_query="));
    put_u32(UNOCHAT_MAX_QUERY);
    put_P(PSTR(" max_reply="));
    put_u32(UNOCHAT_MAX_REPLY);
    put_P(PSTR(" f_cpu="));
    put_u32(F_CPU);
    newline();
}

static void print_layer_cycles()
{
    put_P(PSTR(" layers="));
    for (uint8_t k = 0; k < UNOCHAT_N_LAYERS; k++) {
        if (k) put(',');
        put_u32(layer_cycles[k]);
    }
}

/* the first line after reset: for a person (hosts recognize a reset by its first word, unochat) */
static const char START_LINE[] PROGMEM =
    "unochat ready: ask, then Enter (!h: see what you type)\r\n";

/* ---- chat --------------------------------------------------------------------------------------- */
static unochat_state_t state;

/* the reply to a query, written as it is generated; returns its length */
static uint8_t chat(const char *query, uint8_t len)
{
    uint8_t n = 0;
    int16_t c;
    unochat_start(&state, query, len);
    while ((c = unochat_step(&state)) >= 0) {
        put((uint8_t)c);
        n++;
    }
    return n;
}

/* The same generation, timed. Each step's cycles are written as soon as they are known, outside the
 * timed region, so no per-step table is kept. The reply's text, which `!t` prints after the figures,
 * is not kept either (a reply may have 255 characters): generation is deterministic, so it is made once
 * more, untimed, as a chat makes it. */
static void timed_chat(const char *query, uint8_t len)
{
    uint8_t n = 0;
    memset(layer_cycles, 0, sizeof layer_cycles);
    uint32_t start = cycles();
    unochat_start(&state, query, len);
    uint32_t query_cycles = cycles() - start;
    uint32_t total = query_cycles;
    put_P(PSTR("!t step="));
    for (;;) {
        uint32_t mark = cycles();
        int16_t c = unochat_step(&state);
        uint32_t spent = cycles() - mark;
        total += spent;
        if (n) put(',');
        put_u32(spent);
        if (c < 0) break;
        n++;
    }
    put_P(PSTR(" query="));
    put_u32(query_cycles);
    put_P(PSTR(" total="));
    put_u32(total);
    print_layer_cycles();
    put_P(PSTR(" ctx="));
    put_u32(layer_cycles[UNOCHAT_PROFILE_CTX]);
    put_P(PSTR(" argmax="));
    put_u32(layer_cycles[UNOCHAT_PROFILE_ARGMAX]);
    put_P(PSTR(" rq="));
    put_u32(layer_cycles[UNOCHAT_PROFILE_REQUANT]);
    put_P(PSTR(" n="));
    put_u32(n);
    put_P(PSTR(" reply="));
    chat(query, len);
    newline();
}

/* What a chat's reply costs the CPU on the UART: the text written back a character at a time, each
 * into an empty data register as a chat's are (a step takes far longer than the 87 us a byte takes to
 * go out), with the Timer1 cycles of those writes. */
static void timed_write(const char *text, uint8_t len)
{
    uint32_t spent = 0;
    put_P(PSTR("!u "));
    for (uint8_t k = 0; k < len; k++) {
        while (sent && !(UCSR0A & _BV(UDRE0))) {}
        uint32_t mark = cycles();
        put((uint8_t)text[k]);
        spent += cycles() - mark;
    }
    put_P(PSTR(" cycles="));
    put_u32(spent);
    put_P(PSTR(" n="));
    put_u32(len);
    newline();
}

/* ---- input: one state machine over received bytes ------------------------------------------------ */
enum Mode : uint8_t { LINE_START, CHAT, COMMAND_NAME, COMMAND_ARG, HEX_INPUT };

static Mode mode = LINE_START;
static unochat_line_t line;
static char command; /* 0 for a bare "!" line: an unknown command */
static bool separator; /* the next byte may be the space between command letter and argument */
static uint16_t nibbles;
static bool hex_bad;
static bool echo; /* !h */

static int8_t hex_value(uint8_t b)
{
    if (b >= '0' && b <= '9') return b - '0';
    if (b >= 'a' && b <= 'f') return b - 'a' + 10;
    if (b >= 'A' && b <= 'F') return b - 'A' + 10;
    return -1;
}

static void hex_feed(uint8_t b)
{
    if (b == ' ') return;
    int8_t v = hex_value(b);
    if (v < 0 || nibbles >= 2 * UNOCHAT_N_INPUTS) {
        hex_bad = true;
        return;
    }
    uint8_t *x = &state.x[nibbles >> 1];
    *x = (nibbles & 1) ? (uint8_t)(*x | v) : (uint8_t)(v << 4);
    nibbles++;
}

static void run_command()
{
    switch (command) {
    case 's':
        put_P(PSTR("!s"));
        for (uint8_t k = 0; k < line.len; k++) put((uint8_t)line.text[k]);
        newline();
        break;
    case 'i':
        print_info();
        break;
    case 't':
        timed_chat(line.text, line.len);
        break;
    case 'u':
        timed_write(line.text, line.len);
        break;
    case 'x':
        if (hex_bad || nibbles != 2 * UNOCHAT_N_INPUTS) {
            put_P(PSTR("!e x needs exactly 2 hex digits per input\r\n"));
            break;
        }
        memset(layer_cycles, 0, sizeof layer_cycles);
        unochat_logits(state.x, state.logits);
        put_P(PSTR("!x "));
        for (uint8_t k = 0; k < UNOCHAT_N_OUTPUTS; k++) {
            if (k) put(',');
            put_i32(state.logits[k]);
        }
        newline();
        break;
    case 'p':
        put_P(PSTR("!p"));
        print_layer_cycles();
        newline();
        break;
    case 'h':
        echo = !echo;
        put_P(PSTR("!h echo o"));
        put_P(echo ? PSTR("n\r\n") : PSTR("ff\r\n"));
        break;
    case 'm':
        put_P(PSTR("!m free="));
        put_u32(free_now());
        put_P(PSTR(" least_free="));
        put_u32(free_least());
        newline();
        break;
    default:
        put_P(PSTR("!e unknown command\r\n"));
    }
}

static bool is_line_end(uint8_t b) { return b == '\r' || b == '\n'; }

static void feed(uint8_t b)
{
    switch (mode) {
    case LINE_START:
        if (is_line_end(b)) return; /* empty lines and the LF of CRLF */
        unochat_line_reset(&line);
        if (b == '!') {
            mode = COMMAND_NAME;
            return;
        }
        mode = CHAT;
        /* fall through */
    case CHAT:
        if (unochat_line_feed(&line, b)) {
            if (line.len) {
                chat(line.text, line.len);
                newline();
            }
            mode = LINE_START;
        }
        return;
    case COMMAND_NAME:
        if (is_line_end(b)) {
            command = 0;
            run_command();
            mode = LINE_START;
            return;
        }
        command = (char)b;
        if (command == 'x') {
            mode = HEX_INPUT;
            nibbles = 0;
            hex_bad = false;
        } else {
            mode = COMMAND_ARG;
            separator = true;
        }
        return;
    case COMMAND_ARG:
        /* the separator must not take one of the argument's MAX_QUERY places in the line buffer */
        if (separator) {
            separator = false;
            if (b == ' ') return;
        }
        if (unochat_line_feed(&line, b)) { /* the argument is stripped like a chat line */
            run_command();
            mode = LINE_START;
        }
        return;
    case HEX_INPUT:
        if (is_line_end(b)) {
            run_command();
            mode = LINE_START;
        } else {
            hex_feed(b);
        }
        return;
    }
}

/* With echo on (!h) a person in a terminal sees what they type: printable bytes come back as typed (the
 * line editor may still fold a run of spaces or cut a long line), backspace rubs out a character the line
 * holds, a line's end starts the answer on a new line, and "> " asks for the next one after it. */
static void echo_before(uint8_t b)
{
    if (is_line_end(b)) {
        if (mode != LINE_START) newline();
    } else if (b == 0x08 || b == 0x7F) {
        if (mode != LINE_START && line.len) put_P(PSTR("\b \b"));
    } else if (b >= 0x20 && b < 0x7F) {
        put(b);
    }
}

void setup()
{
    paint_stack();
    cycles_begin();
    uart_begin();
    sei();
    put_P(START_LINE);
}

void loop()
{
    while (uart_available()) {
        uint8_t b = uart_read();
        bool ends = is_line_end(b) && mode != LINE_START;
        if (echo) echo_before(b);
        feed(b);
        if (ends && echo) put_P(PSTR("> ")); /* also right after `!h` turned echo on */
    }
    /* sleep until the next byte; sei() lets exactly one more instruction (sleep) run first */
    set_sleep_mode(SLEEP_MODE_IDLE);
    cli();
    if (!uart_available()) {
        sleep_enable();
        sei();
        sleep_cpu();
        sleep_disable();
    }
    sei();
}

/* The sketch's own main() replaces the Arduino core's, whose init() starts Timer0 (millis(), with its
 * interrupt), Timer2 and the ADC for PWM and analogRead: none of which this sketch uses. Without them the
 * cycle counts carry no timer jitter, an idle MCU sleeps until the UART wakes it (the virtual UNO would
 * otherwise step through every timer tick in wall time), and about 400 B of flash go to the model. */
int main(void)
{
    setup();
    for (;;) loop();
}
