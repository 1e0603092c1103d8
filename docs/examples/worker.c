/*
 * A small hfendpoint worker in C, with msgpack-c: it serves `tokenize`
 * and `embeddings` with a toy model (words hashed to ids, ids hashed to
 * an L2-normalised vector), to show the protocol without the Python
 * library. See docs/workers.md and docs/protocol.md.
 *
 * Not built by the project. On Debian or Ubuntu:
 *
 *     apt-get install libmsgpack-dev
 *     cc -O2 -Wall -o worker docs/examples/worker.c $(pkg-config --cflags --libs msgpack) -lm
 *     hfendpoint ./worker
 *
 * (msgpack-c 6 and later name the library msgpack-c: pkg-config msgpack-c.)
 *
 * One request at a time, in order: fine for a fast model. A real worker
 * would hand requests to threads and write each reply whole, under a lock.
 */

#include <errno.h>
#include <math.h>
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DIMENSIONS 8
#define VOCABULARY 30000

/* Write all of a packed message to the gateway. */
static void send_all(int fd, const msgpack_sbuffer *buffer)
{
    size_t done = 0;
    while (done < buffer->size) {
        ssize_t n = write(fd, buffer->data + done, buffer->size - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            perror("worker: write");
            exit(1);
        }
        done += (size_t)n;
    }
}

/* Start a reply: {"id": id, KEY: ...}, the value packed by the caller. */
static void pack_reply_head(msgpack_packer *pk, uint64_t id, const char *key)
{
    msgpack_pack_map(pk, 2);
    msgpack_pack_str_with_body(pk, "id", 2);
    msgpack_pack_uint64(pk, id);
    msgpack_pack_str_with_body(pk, key, strlen(key));
}

static void send_error(int fd, uint64_t id, const char *message)
{
    msgpack_sbuffer buffer;
    msgpack_sbuffer_init(&buffer);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buffer, msgpack_sbuffer_write);
    pack_reply_head(&pk, id, "error");
    msgpack_pack_str_with_body(&pk, message, strlen(message));
    send_all(fd, &buffer);
    msgpack_sbuffer_destroy(&buffer);
}

/* The value of KEY in a map with string keys, or NULL. */
static const msgpack_object *lookup(const msgpack_object *map, const char *key)
{
    if (map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t length = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == length &&
            memcmp(k->via.str.ptr, key, length) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static uint32_t fnv1a(const char *bytes, size_t length, uint32_t hash)
{
    for (size_t i = 0; i < length; i++)
        hash = (hash ^ (unsigned char)bytes[i]) * 16777619u;
    return hash;
}

/* The handshake: the calls served, the model's name. No cancel. */
static void describe(msgpack_packer *pk, uint64_t id)
{
    pack_reply_head(pk, id, "data");
    msgpack_pack_map(pk, 3);
    msgpack_pack_str_with_body(pk, "protocol", 8);
    msgpack_pack_int(pk, 2);
    msgpack_pack_str_with_body(pk, "calls", 5);
    msgpack_pack_array(pk, 2);
    msgpack_pack_str_with_body(pk, "tokenize", 8);
    msgpack_pack_str_with_body(pk, "embeddings", 10);
    msgpack_pack_str_with_body(pk, "model", 5);
    msgpack_pack_str_with_body(pk, "c-embedder", 10);
}

/* The ids of the space-separated words of a text, packed into PK if it is
 * not NULL; returns how many there are. */
static uint32_t words(const char *text, size_t size, msgpack_packer *pk)
{
    uint32_t count = 0;
    size_t start = 0;
    for (size_t j = 0; j <= size; j++) {
        if (j < size && text[j] != ' ')
            continue;
        if (j > start) {
            count++;
            if (pk != NULL)
                msgpack_pack_uint32(pk, fnv1a(text + start, j - start, 2166136261u) % VOCABULARY);
        }
        start = j + 1;
    }
    return count;
}

/* {"input": [str, ...]} -> {"tokens": [[id, ...], ...]}: one id per word. */
static const char *tokenize(msgpack_packer *pk, uint64_t id, const msgpack_object *input)
{
    if (input == NULL || input->type != MSGPACK_OBJECT_ARRAY)
        return "tokenize: input must be a list of strings";
    for (uint32_t i = 0; i < input->via.array.size; i++)
        if (input->via.array.ptr[i].type != MSGPACK_OBJECT_STR)
            return "tokenize: input must be a list of strings";
    pack_reply_head(pk, id, "data");
    msgpack_pack_map(pk, 1);
    msgpack_pack_str_with_body(pk, "tokens", 6);
    msgpack_pack_array(pk, input->via.array.size);
    for (uint32_t i = 0; i < input->via.array.size; i++) {
        const msgpack_object_str *text = &input->via.array.ptr[i].via.str;
        /* MessagePack wants an array's length first: count, then pack. */
        msgpack_pack_array(pk, words(text->ptr, text->size, NULL));
        words(text->ptr, text->size, pk);
    }
    return NULL;
}

/* {"input": [[id, ...], ...]} -> {"embeddings": [[float, ...], ...]}. */
static const char *embeddings(msgpack_packer *pk, uint64_t id, const msgpack_object *input)
{
    if (input == NULL || input->type != MSGPACK_OBJECT_ARRAY)
        return "embeddings: input must be a list of token lists";
    for (uint32_t i = 0; i < input->via.array.size; i++) {
        const msgpack_object *ids = &input->via.array.ptr[i];
        if (ids->type != MSGPACK_OBJECT_ARRAY)
            return "embeddings: input must be a list of token lists";
        for (uint32_t j = 0; j < ids->via.array.size; j++)
            if (ids->via.array.ptr[j].type != MSGPACK_OBJECT_POSITIVE_INTEGER)
                return "embeddings: token ids must be non-negative integers";
    }
    pack_reply_head(pk, id, "data");
    msgpack_pack_map(pk, 1);
    msgpack_pack_str_with_body(pk, "embeddings", 10);
    msgpack_pack_array(pk, input->via.array.size);
    for (uint32_t i = 0; i < input->via.array.size; i++) {
        const msgpack_object *ids = &input->via.array.ptr[i];
        float vector[DIMENSIONS] = {0};
        double norm = 0;
        for (uint32_t j = 0; j < ids->via.array.size; j++) {
            uint64_t token = ids->via.array.ptr[j].via.u64;
            for (int d = 0; d < DIMENSIONS; d++) {
                uint32_t h = fnv1a((const char *)&token, sizeof token, 2166136261u + d);
                vector[d] += (float)(h % 1000) / 1000.0f - 0.5f;
            }
        }
        for (int d = 0; d < DIMENSIONS; d++)
            norm += (double)vector[d] * vector[d];
        norm = norm > 0 ? sqrt(norm) : 1;
        msgpack_pack_array(pk, DIMENSIONS);
        for (int d = 0; d < DIMENSIONS; d++)
            msgpack_pack_float(pk, (float)(vector[d] / norm));
    }
    return NULL;
}

/* One message from the gateway: {"id": uint, "name": str, "data": ...}. */
static void handle(int fd, const msgpack_object *message)
{
    const msgpack_object *id = lookup(message, "id");
    const msgpack_object *name = lookup(message, "name");
    const msgpack_object *data = lookup(message, "data");
    if (id == NULL || id->type != MSGPACK_OBJECT_POSITIVE_INTEGER || name == NULL ||
        name->type != MSGPACK_OBJECT_STR) {
        fprintf(stderr, "Skipping malformed request\n");
        return;
    }
    char call[64];
    snprintf(call, sizeof call, "%.*s", (int)name->via.str.size, name->via.str.ptr);

    msgpack_sbuffer buffer;
    msgpack_sbuffer_init(&buffer);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &buffer, msgpack_sbuffer_write);
    const char *error = NULL;
    const msgpack_object *input = data ? lookup(data, "input") : NULL;
    if (strcmp(call, "hfendpoint.describe") == 0)
        describe(&pk, id->via.u64);
    else if (strcmp(call, "tokenize") == 0)
        error = tokenize(&pk, id->via.u64, input);
    else if (strcmp(call, "embeddings") == 0)
        error = embeddings(&pk, id->via.u64, input);
    else
        error = "unknown call";
    if (error != NULL)
        send_error(fd, id->via.u64, error);     /* nothing was packed */
    else
        send_all(fd, &buffer);
    msgpack_sbuffer_destroy(&buffer);
}

int main(void)
{
    const char *fd_text = getenv("HFENDPOINT_FD");
    if (fd_text == NULL) {
        fprintf(stderr, "this program is an hfendpoint worker; start it through the gateway\n");
        return 2;
    }
    int fd = atoi(fd_text);
    /* Load the model here, before reading: the handshake answer means ready. */

    msgpack_unpacker unpacker;
    if (!msgpack_unpacker_init(&unpacker, 1 << 16))
        return 1;
    msgpack_unpacked result;
    msgpack_unpacked_init(&result);
    for (;;) {
        /* Messages are concatenated with no framing: feed what arrives to
         * the unpacker and take out every whole message it holds. */
        if (msgpack_unpacker_buffer_capacity(&unpacker) < 4096 &&
            !msgpack_unpacker_reserve_buffer(&unpacker, 1 << 16))
            return 1;
        ssize_t n = read(fd, msgpack_unpacker_buffer(&unpacker),
                         msgpack_unpacker_buffer_capacity(&unpacker));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perror("worker: read");
            return 1;
        }
        if (n == 0)
            break;                               /* EOF: the gateway is stopping */
        msgpack_unpacker_buffer_consumed(&unpacker, (size_t)n);
        msgpack_unpack_return status;
        while ((status = msgpack_unpacker_next(&unpacker, &result)) == MSGPACK_UNPACK_SUCCESS)
            handle(fd, &result.data);
        if (status == MSGPACK_UNPACK_PARSE_ERROR) {
            fprintf(stderr, "worker: the gateway sent malformed MessagePack\n");
            return 1;
        }
    }
    msgpack_unpacked_destroy(&result);
    msgpack_unpacker_destroy(&unpacker);
    return 0;
}
