/*
 * lpreader: a liblinphone client that reads its messages, so that liblinphone sends display
 * notifications (RFC 5438 "displayed").
 *
 * Why it exists: marking a chat room as read (linphone_chat_room_mark_as_read) is the only
 * thing that makes liblinphone send a display IMDN, and neither linphone-daemon nor linphonec
 * ever does it. This program runs one core from a config
 * file (the same linphonerc the daemon uses), prints what happens on stdout, one event per
 * line, and marks each room read a given delay after a message arrives in it.
 *
 * Usage: lpreader CONFIG READ_DELAY_MS RUN_SECONDS
 *   Runs at most RUN_SECONDS, and stops early on end of input on stdin (the test closes it).
 * Commands on stdin, one per line:
 *   compose <SIP URI>   the user types to URI: liblinphone sends an is-composing "active"
 *                       indication (RFC 3994), then "idle" after its idle timeout
 * Output lines:
 *   registration <LinphoneRegistrationState name>
 *   received <imdn.Message-ID> <text>
 *   read <imdn.Message-ID>
 *   composing <SIP URI>
 *
 * Build (Debian's linphone.pc leaves -llinphone out):
 *   gcc -o lpreader lpreader.c $(pkg-config --cflags --libs linphone) -llinphone
 */

#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <linphone/core.h>

#define MAX_PENDING 64

typedef struct {
	LinphoneChatRoom *room;
	char *message_id;
	long long read_at_ms;
} PendingRead;

static PendingRead pending[MAX_PENDING];
static int pending_count = 0;
static long long read_delay_ms = 0;

static long long now_ms(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_registration(LinphoneCore *core, LinphoneProxyConfig *proxy, LinphoneRegistrationState state,
                            const char *message) {
	(void)core;
	(void)proxy;
	(void)message;
	printf("registration %s\n", linphone_registration_state_to_string(state));
	fflush(stdout);
}

static void on_message(LinphoneCore *core, LinphoneChatRoom *room, LinphoneChatMessage *message) {
	(void)core;
	const char *id = linphone_chat_message_get_message_id(message);
	const char *text = linphone_chat_message_get_utf8_text(message);
	printf("received %s %s\n", id ? id : "-", text ? text : "");
	fflush(stdout);
	if (pending_count < MAX_PENDING) {
		pending[pending_count].room = linphone_chat_room_ref(room);
		pending[pending_count].message_id = strdup(id ? id : "-");
		pending[pending_count].read_at_ms = now_ms() + read_delay_ms;
		pending_count++;
	}
}

static void mark_due_rooms_read(void) {
	long long now = now_ms();
	int kept = 0;
	for (int i = 0; i < pending_count; i++) {
		if (pending[i].read_at_ms <= now) {
			/* Said before doing it: the display IMDN may be answered before the call returns. */
			printf("read %s\n", pending[i].message_id);
			fflush(stdout);
			linphone_chat_room_mark_as_read(pending[i].room);
			linphone_chat_room_unref(pending[i].room);
			free(pending[i].message_id);
		} else {
			pending[kept++] = pending[i];
		}
	}
	pending_count = kept;
}

static char line[512];
static size_t line_length = 0;

static void run_command(LinphoneCore *core, const char *command) {
	if (strncmp(command, "compose ", 8) == 0) {
		/* Deprecated in favour of linphone_core_search_chat_room, but the one-call way to get
		 * the basic 1-to-1 room the daemon also uses for "message <uri>". */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
		LinphoneChatRoom *room = linphone_core_get_chat_room_from_uri(core, command + 8);
#pragma GCC diagnostic pop
		if (room != NULL) {
			printf("composing %s\n", command + 8);
			fflush(stdout);
			linphone_chat_room_compose(room);
		}
	}
}

/* Reads what stdin has; runs each complete line; returns 1 once stdin is closed. */
static int read_stdin(LinphoneCore *core) {
	struct pollfd fd = {.fd = 0, .events = POLLIN};
	if (poll(&fd, 1, 0) <= 0) {
		return 0;
	}
	char buffer[256];
	ssize_t n = read(0, buffer, sizeof buffer);
	if (n <= 0) {
		return 1;
	}
	for (ssize_t i = 0; i < n; i++) {
		if (buffer[i] == '\n') {
			line[line_length] = '\0';
			run_command(core, line);
			line_length = 0;
		} else if (line_length + 1 < sizeof line) {
			line[line_length++] = buffer[i];
		}
	}
	return 0;
}

int main(int argc, char **argv) {
	if (argc != 4) {
		fprintf(stderr, "usage: %s CONFIG READ_DELAY_MS RUN_SECONDS\n", argv[0]);
		return 2;
	}
	read_delay_ms = atoll(argv[2]);
	long long stop_at = now_ms() + atoll(argv[3]) * 1000;

	LinphoneFactory *factory = linphone_factory_get();
	LinphoneCore *core = linphone_factory_create_core_3(factory, argv[1], NULL, NULL);
	LinphoneCoreCbs *cbs = linphone_factory_create_core_cbs(factory);
	linphone_core_cbs_set_registration_state_changed(cbs, on_registration);
	linphone_core_cbs_set_message_received(cbs, on_message);
	linphone_core_add_callbacks(core, cbs);
	linphone_core_cbs_unref(cbs);
	if (linphone_core_start(core) != 0) {
		fprintf(stderr, "linphone_core_start failed\n");
		return 1;
	}
	printf("started\n");
	fflush(stdout);

	while (now_ms() < stop_at && !read_stdin(core)) {
		linphone_core_iterate(core);
		mark_due_rooms_read();
		usleep(20000);
	}
	/* Let the last display IMDNs and the un-REGISTER leave. */
	for (int i = 0; i < 25; i++) {
		linphone_core_iterate(core);
		usleep(20000);
	}
	linphone_core_stop(core);
	linphone_core_unref(core);
	printf("stopped\n");
	fflush(stdout);
	return 0;
}
