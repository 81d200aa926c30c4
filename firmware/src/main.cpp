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
 * The letter after '!' names the command; one space after it is a separator, the rest of the line
 * is the argument, edited like a chat line (so "!t <query>" times exactly the chat line "<query>").
 * Errors come back as "!e <reason>". Bytes are handled as they arrive: a line longer than the buffers
 * is cut, never overflows; binary bytes are dropped by the line editor. While a reply is generated,
 * received bytes wait in the Arduino core's 64-byte buffer (63 usable) and what does not fit is lost
 * (no flow control on a UNO): a host sends one request and waits for its answer.
 * The model itself is generated into firmware/generated/ by `unochat export`. */
#include <Arduino.h>
#include <avr/sleep.h>

#include "unochat_model.h" /* firmware/generated/, on the include path (platformio.ini) */

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
    Serial.print(F("!i unochat=" UNOCHAT_VERSION " "));
    Serial.print((const __FlashStringHelper *)unochat_model_info);
    Serial.print(F(" inputs=" ));
    Serial.print(UNOCHAT_N_INPUTS);
    Serial.print(F(" outputs="));
    Serial.print(UNOCHAT_N_OUTPUTS);
    Serial.print(F(" max_query="));
    Serial.print(UNOCHAT_MAX_QUERY);
    Serial.print(F(" max_reply="));
    Serial.print(UNOCHAT_MAX_REPLY);
    Serial.print(F(" f_cpu="));
    Serial.println(F_CPU);
}

static void print_layer_cycles()
{
    Serial.print(F(" layers="));
    for (uint8_t k = 0; k < UNOCHAT_N_LAYERS; k++) {
        if (k) Serial.write(',');
        Serial.print(layer_cycles[k]);
    }
}

/* ---- chat --------------------------------------------------------------------------------------- */
static unochat_state_t state;
static char reply[UNOCHAT_MAX_REPLY];

static void chat(const char *query, uint8_t len)
{
    int16_t c;
    unochat_start(&state, query, len);
    while ((c = unochat_step(&state)) >= 0) Serial.write((char)c);
    Serial.println();
}

/* The same generation, timed. Each step's cycles are printed as soon as they are known, outside the
 * timed region, so no per-step table is kept; and sent before the next step starts, so that no transmit
 * interrupt lands in a step (a chat writes its one character a step into an empty buffer: `!u`). */
static void timed_chat(const char *query, uint8_t len)
{
    uint8_t n = 0;
    int16_t c;
    memset(layer_cycles, 0, sizeof layer_cycles);
    uint32_t start = cycles();
    unochat_start(&state, query, len);
    uint32_t query_cycles = cycles() - start;
    uint32_t total = query_cycles;
    Serial.print(F("!t step="));
    Serial.flush();
    for (;;) {
        uint32_t mark = cycles();
        c = unochat_step(&state);
        uint32_t spent = cycles() - mark;
        total += spent;
        if (n) Serial.write(',');
        Serial.print(spent);
        Serial.flush();
        if (c < 0) break;
        reply[n++] = (char)c;
    }
    Serial.print(F(" query="));
    Serial.print(query_cycles);
    Serial.print(F(" total="));
    Serial.print(total);
    print_layer_cycles();
    Serial.print(F(" ctx="));
    Serial.print(layer_cycles[UNOCHAT_PROFILE_CTX]);
    Serial.print(F(" argmax="));
    Serial.print(layer_cycles[UNOCHAT_PROFILE_ARGMAX]);
    Serial.print(F(" rq="));
    Serial.print(layer_cycles[UNOCHAT_PROFILE_REQUANT]);
    Serial.print(F(" n="));
    Serial.print(n);
    Serial.print(F(" reply="));
    Serial.write((const uint8_t *)reply, n);
    Serial.println();
}

/* What a chat's reply costs the CPU on the UART: the text written back a character at a time, each
 * into an empty transmit buffer as a chat's are (a step takes far longer than the 87 us a byte takes to
 * go out), with the Timer1 cycles of those writes. */
static void timed_write(const char *text, uint8_t len)
{
    uint32_t spent = 0;
    Serial.print(F("!u "));
    for (uint8_t k = 0; k < len; k++) {
        Serial.flush();
        uint32_t mark = cycles();
        Serial.write(text[k]);
        spent += cycles() - mark;
    }
    Serial.print(F(" cycles="));
    Serial.print(spent);
    Serial.print(F(" n="));
    Serial.println(len);
}

/* ---- input: one state machine over received bytes ------------------------------------------------ */
enum Mode : uint8_t { LINE_START, CHAT, COMMAND_NAME, COMMAND_ARG, HEX_INPUT };

static Mode mode = LINE_START;
static unochat_line_t line;
static char command; /* 0 for a bare "!" line: an unknown command */
static bool separator; /* the next byte may be the space between command letter and argument */
static uint16_t nibbles;
static bool hex_bad;

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
        Serial.print(F("!s"));
        Serial.write((const uint8_t *)line.text, line.len);
        Serial.println();
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
            Serial.println(F("!e x needs exactly 2 hex digits per input"));
            break;
        }
        memset(layer_cycles, 0, sizeof layer_cycles);
        unochat_logits(state.x, state.logits);
        Serial.print(F("!x "));
        for (uint8_t k = 0; k < UNOCHAT_N_OUTPUTS; k++) {
            if (k) Serial.write(',');
            Serial.print(state.logits[k]);
        }
        Serial.println();
        break;
    case 'p':
        Serial.print(F("!p"));
        print_layer_cycles();
        Serial.println();
        break;
    case 'm':
        Serial.print(F("!m free="));
        Serial.print(free_now());
        Serial.print(F(" least_free="));
        Serial.println(free_least());
        break;
    default:
        Serial.println(F("!e unknown command"));
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
            if (line.len) chat(line.text, line.len);
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

void setup()
{
    paint_stack();
    /* millis(), delay() and PWM are not used: stop Timer0 and Timer2, which the Arduino core started.
     * Without Timer0's interrupt the cycle counts carry no jitter, and an idle MCU sleeps until the UART
     * wakes it (the virtual UNO would otherwise step through every timer tick in wall time: 8x slower
     * round trips). */
    TIMSK0 = 0;
    TCCR0B = 0;
    TCCR2B = 0;
    cycles_begin();
    Serial.begin(115200);
    print_info();
}

void loop()
{
    while (Serial.available()) feed((uint8_t)Serial.read());
    /* sleep until the next byte; sei() lets exactly one more instruction (sleep) run first */
    set_sleep_mode(SLEEP_MODE_IDLE);
    cli();
    if (!Serial.available()) {
        sleep_enable();
        sei();
        sleep_cpu();
        sleep_disable();
    }
    sei();
}
