/*
 * A stand-in for NVIDIA's libnvidia-ml.so.1 for hostcollector's tests.
 *
 * It is compiled against NVIDIA's own nvml.h (nvidia-nvml-dev), so every exported function has
 * the exact prototype, and every struct the exact layout, of the real library: a mismatch is a
 * compile error. It answers from a scenario file in a small line format (README.md) whose path
 * is read from $HC_NVML_SCENARIO at every nvmlInit*; the file is re-read whenever its mtime,
 * size or inode changes (checked with stat(2) at the start of every exported call), so tests can
 * rewrite it mid-run (tests/nvml_stub/stub.py writes it atomically).
 *
 * Build (tests/nvml_stub/stub.py: build_stub):
 *   gcc -shared -fPIC -O1 -Wall -Werror -I<nvml.h dir> -Wl,-soname,libnvidia-ml.so.1 \
 *       -o <dir>/libnvidia-ml.so.1 nvml_stub.c
 */
#define _GNU_SOURCE
/* Declare every versioned symbol under its own name (nvmlInit_v2, nvmlDeviceGetCount_v2, ...)
 * and the old unversioned ones too, so that each definition below is checked against nvml.h. */
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include <nvml.h>

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define HC_EXPORT __attribute__((visibility("default")))

#define HC_MAX_GPUS 64
#define HC_MAX_VGPUS 256
#define HC_MAX_SAMPLES 256 /* per sample type per GPU */
#define HC_MAX_VGPU_SAMPLES 64
#define HC_MAX_XIDS 128
#define HC_MAX_ERRORS 32
#define HC_NSAMPLE_TYPES 4 /* GPU, MEMORY, ENC, DEC utilization */
#define HC_STR 128
#define HC_MAX_FIELD_ERRORS 32
#define HC_MAX_GPM 32 /* GPM metric values per GPU, and per GPU instance */
#define HC_MAX_GPU_INSTANCES 8
#define HC_LINE 4096

struct hc_err {
    char sym[80];
    nvmlReturn_t code;
};

struct hc_sample {
    unsigned long long ts;
    unsigned int value;
};

struct hc_vsample {
    unsigned long long ts;
    unsigned int sm, mem, enc, dec;
};

struct hc_link {
    unsigned int active;
    unsigned long long counter[NVML_NVLINK_ERROR_COUNT];
    unsigned long long tx_kib, rx_kib; /* NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX/RX */
};

struct hc_field_error {
    unsigned int field_id;
    nvmlReturn_t code;
};

struct hc_gpm_value {
    unsigned int metric_id;
    double value;
};

/* The GPM metrics of the whole GPU (gpu_instance_id 0xFFFFFFFF) or of one MIG GPU instance:
 * what nvmlGpmMetricsGet answers for two samples of it, whatever their interval. */
struct hc_gpm_set {
    unsigned int gpu_instance_id;
    unsigned int count;
    struct hc_gpm_value values[HC_MAX_GPM];
};

struct hc_xid {
    unsigned long long xid;
    unsigned int gpu_instance_id, compute_instance_id;
};

struct hc_gpu {
    char uuid[HC_STR], name[HC_STR];
    int has_pci;
    unsigned int domain, bus, device, function;
    unsigned int pci_device_id, pci_subsystem_id;
    unsigned long long memory_total, memory_used, memory_reserved;
    unsigned int power_mw;
    unsigned long long energy_mj;
    unsigned int temperature_c, sm_clock_mhz, mem_clock_mhz;
    unsigned long long clocks_event_reasons;
    unsigned long long ecc[NVML_MEMORY_ERROR_TYPE_COUNT][NVML_ECC_COUNTER_TYPE_COUNT];
    unsigned int remapped[4]; /* correctable, uncorrectable, pending, failure */
    unsigned int pcie_replay, pcie_tx_kbps, pcie_rx_kbps;
    unsigned int nvlink_count;
    struct hc_link links[NVML_NVLINK_MAX_LINKS];
    unsigned int persistence_mode, compute_mode, mig_mode, mig_pending_mode;
    int has_mig_pending;
    unsigned int nsamples[HC_NSAMPLE_TYPES];
    struct hc_sample samples[HC_NSAMPLE_TYPES][HC_MAX_SAMPLES];
    unsigned int nxids;
    struct hc_xid xids[HC_MAX_XIDS];
    unsigned int sched_policy, sched_arr_mode, sched_avg_factor, sched_timeslice;
    int lost, handle_lost;
    unsigned int nerrors;
    struct hc_err errors[HC_MAX_ERRORS];
    /* Field values only nvmlDeviceGetFieldValues reads. */
    unsigned long long retired[3]; /* SBE pages, DBE pages, pending (0/1) */
    unsigned int pcie_replay_rollover, pcie_l0_to_recovery, power_average_mw;
    int has_power_average;
    unsigned int nfield_errors;
    struct hc_field_error field_errors[HC_MAX_FIELD_ERRORS];
    /* GPM: supported at all, then the whole GPU's set and one per MIG GPU instance. */
    unsigned int gpm_supported;
    unsigned int ngpm_sets;
    struct hc_gpm_set gpm_sets[1 + HC_MAX_GPU_INSTANCES];
    /* nvmlDeviceGetGpuFabricInfoV; has_fabric 0: NOT_SUPPORTED (no NVSwitch fabric). */
    int has_fabric;
    unsigned int fabric_state, fabric_status, fabric_clique_id, fabric_health_mask,
        fabric_health_summary;
};

struct hc_vgpu {
    unsigned int gpu, id;
    int has_gpu, has_id;
    char vm_id[NVML_DEVICE_UUID_BUFFER_SIZE];
    unsigned int vm_id_type;
    char uuid[NVML_DEVICE_UUID_BUFFER_SIZE], mdev_uuid[NVML_DEVICE_UUID_BUFFER_SIZE];
    unsigned int type_id;
    char type_name[NVML_DEVICE_NAME_BUFFER_SIZE];
    unsigned long long fb_usage;
    unsigned int licensed, license_state;
    unsigned int exp_year, exp_month, exp_day, exp_hour, exp_min, exp_sec, exp_status;
    unsigned int gpu_instance_id;
    int has_pci_id;
    char pci_id[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
    unsigned int encoder[3], fbc[3];
    unsigned int nsamples;
    struct hc_vsample samples[HC_MAX_VGPU_SAMPLES];
    unsigned int nerrors;
    struct hc_err errors[HC_MAX_ERRORS];
};

struct hc_scenario {
    char driver_version[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE];
    char nvml_version[NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE];
    nvmlReturn_t init_error;
    int vgpu_manager;
    long event_wait_max_ms; /* < 0: honour the caller's timeout */
    unsigned int nerrors;
    struct hc_err errors[HC_MAX_ERRORS];
    unsigned int gpu_count;
    struct hc_gpu gpus[HC_MAX_GPUS];
    unsigned int vgpu_count;
    struct hc_vgpu vgpus[HC_MAX_VGPUS];
    /* nvmlSystemGetConfComputeState / ...GpusReadyState; has_cc 0: NOT_SUPPORTED. */
    int has_cc;
    unsigned int cc_environment, cc_feature, cc_devtools_mode, cc_gpus_ready;
};

/* Opaque handle types of nvml.h, defined here. */
#define HC_DEVICE_MAGIC 0x4e564d4cu /* "NVML" */
#define HC_EVENTSET_MAGIC 0x45564e54u /* "EVNT" */

struct nvmlDevice_st {
    unsigned int magic;
    unsigned int index;
};

struct nvmlEventSet_st {
    unsigned int magic;
    unsigned long long mask[HC_MAX_GPUS];
    unsigned int cursor[HC_MAX_GPUS]; /* how many of the GPU's scenario Xids were delivered */
};

static pthread_mutex_t hc_mutex = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static struct nvmlDevice_st hc_devices[HC_MAX_GPUS];
static unsigned int hc_refcount;
static struct hc_scenario *hc_scn; /* NULL until a scenario parsed */
static int hc_broken;              /* the file changed into something unparsable */
static char hc_path[4096];
static struct stat hc_stat;
static int hc_have_stat;
static unsigned int hc_reloads;

static void hc_lock(void) { pthread_mutex_lock(&hc_mutex); }
static void hc_unlock(void) { pthread_mutex_unlock(&hc_mutex); }

#define DONE(rc)                                                                                  \
    do {                                                                                          \
        nvmlReturn_t done_rc_ = (rc);                                                             \
        hc_unlock();                                                                              \
        return done_rc_;                                                                          \
    } while (0)

/* ------------------------------------------------------------------------------------------ */
/* Error codes                                                                                 */

static const struct {
    const char *name;
    nvmlReturn_t code;
    const char *text;
} hc_codes[] = {
    /* Texts of codes 0-20 and 999: real NVML's nvmlErrorString (pynvml mirrors them). */
    {"NVML_SUCCESS", NVML_SUCCESS, "Success"},
    {"NVML_ERROR_UNINITIALIZED", NVML_ERROR_UNINITIALIZED, "Uninitialized"},
    {"NVML_ERROR_INVALID_ARGUMENT", NVML_ERROR_INVALID_ARGUMENT, "Invalid Argument"},
    {"NVML_ERROR_NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED, "Not Supported"},
    {"NVML_ERROR_NO_PERMISSION", NVML_ERROR_NO_PERMISSION, "Insufficient Permissions"},
    {"NVML_ERROR_ALREADY_INITIALIZED", NVML_ERROR_ALREADY_INITIALIZED, "Already Initialized"},
    {"NVML_ERROR_NOT_FOUND", NVML_ERROR_NOT_FOUND, "Not Found"},
    {"NVML_ERROR_INSUFFICIENT_SIZE", NVML_ERROR_INSUFFICIENT_SIZE, "Insufficient Size"},
    {"NVML_ERROR_INSUFFICIENT_POWER", NVML_ERROR_INSUFFICIENT_POWER,
     "Insufficient External Power"},
    {"NVML_ERROR_DRIVER_NOT_LOADED", NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"},
    {"NVML_ERROR_TIMEOUT", NVML_ERROR_TIMEOUT, "Timeout"},
    {"NVML_ERROR_IRQ_ISSUE", NVML_ERROR_IRQ_ISSUE, "Interrupt Request Issue"},
    {"NVML_ERROR_LIBRARY_NOT_FOUND", NVML_ERROR_LIBRARY_NOT_FOUND,
     "NVML Shared Library Not Found"},
    {"NVML_ERROR_FUNCTION_NOT_FOUND", NVML_ERROR_FUNCTION_NOT_FOUND, "Function Not Found"},
    {"NVML_ERROR_CORRUPTED_INFOROM", NVML_ERROR_CORRUPTED_INFOROM, "Corrupted infoROM"},
    {"NVML_ERROR_GPU_IS_LOST", NVML_ERROR_GPU_IS_LOST, "GPU is lost"},
    {"NVML_ERROR_RESET_REQUIRED", NVML_ERROR_RESET_REQUIRED, "GPU requires restart"},
    {"NVML_ERROR_OPERATING_SYSTEM", NVML_ERROR_OPERATING_SYSTEM,
     "The operating system has blocked the request."},
    {"NVML_ERROR_LIB_RM_VERSION_MISMATCH", NVML_ERROR_LIB_RM_VERSION_MISMATCH,
     "RM has detected an NVML/RM version mismatch."},
    {"NVML_ERROR_IN_USE", NVML_ERROR_IN_USE, "In use by another client"},
    {"NVML_ERROR_MEMORY", NVML_ERROR_MEMORY, "Insufficient Memory"},
    /* 21-30: best effort (no authoritative copy of the real strings at hand). */
    {"NVML_ERROR_NO_DATA", NVML_ERROR_NO_DATA, "No data"},
    {"NVML_ERROR_VGPU_ECC_NOT_SUPPORTED", NVML_ERROR_VGPU_ECC_NOT_SUPPORTED,
     "The requested vgpu operation is not available on target device, becasue ECC is enabled"},
    {"NVML_ERROR_INSUFFICIENT_RESOURCES", NVML_ERROR_INSUFFICIENT_RESOURCES,
     "Ran out of critical resources, other than memory"},
    {"NVML_ERROR_FREQ_NOT_SUPPORTED", NVML_ERROR_FREQ_NOT_SUPPORTED,
     "Ran out of critical resources, other than memory"},
    {"NVML_ERROR_ARGUMENT_VERSION_MISMATCH", NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
     "Argument version mismatch"},
    {"NVML_ERROR_DEPRECATED", NVML_ERROR_DEPRECATED, "Deprecated"},
    {"NVML_ERROR_NOT_READY", NVML_ERROR_NOT_READY, "Not Ready"},
    {"NVML_ERROR_GPU_NOT_FOUND", NVML_ERROR_GPU_NOT_FOUND, "GPU not found"},
    {"NVML_ERROR_INVALID_STATE", NVML_ERROR_INVALID_STATE, "Invalid state"},
    {"NVML_ERROR_RESET_TYPE_NOT_SUPPORTED", NVML_ERROR_RESET_TYPE_NOT_SUPPORTED,
     "Reset type not supported"},
    {"NVML_ERROR_UNKNOWN", NVML_ERROR_UNKNOWN, "Unknown Error"},
};

#define HC_NCODES (sizeof(hc_codes) / sizeof(hc_codes[0]))

HC_EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    for (size_t i = 0; i < HC_NCODES; i++)
        if (hc_codes[i].code == result)
            return hc_codes[i].text;
    return "Unknown Error";
}

/* ------------------------------------------------------------------------------------------ */
/* Scenario parsing                                                                            */

struct hc_parse {
    const char *path;
    unsigned int line;
    char msg[256];
};

static int hc_fail(struct hc_parse *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int hc_fail(struct hc_parse *p, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->msg, sizeof(p->msg), fmt, ap);
    va_end(ap);
    return -1;
}

/* Parses exactly `n` unsigned integers (decimal or 0x hex) from `s`. */
static int hc_ulls(const char *s, unsigned long long *out, int n)
{
    const char *cur = s;
    for (int i = 0; i < n; i++) {
        char *end;
        while (isspace((unsigned char)*cur))
            cur++;
        if (*cur == '\0' || *cur == '-')
            return -1;
        errno = 0;
        out[i] = strtoull(cur, &end, 0);
        if (end == cur || errno != 0)
            return -1;
        cur = end;
    }
    while (isspace((unsigned char)*cur))
        cur++;
    return *cur == '\0' ? 0 : -1;
}

static int hc_uint(struct hc_parse *p, const char *key, const char *v, unsigned int *out)
{
    unsigned long long x;
    if (hc_ulls(v, &x, 1) != 0 || x > 0xffffffffULL)
        return hc_fail(p, "%s: expected an unsigned 32-bit integer, got '%s'", key, v);
    *out = (unsigned int)x;
    return 0;
}

static int hc_ull(struct hc_parse *p, const char *key, const char *v, unsigned long long *out)
{
    if (hc_ulls(v, out, 1) != 0)
        return hc_fail(p, "%s: expected an unsigned 64-bit integer, got '%s'", key, v);
    return 0;
}

static int hc_str(struct hc_parse *p, const char *key, const char *v, char *out, size_t size)
{
    if (strlen(v) >= size)
        return hc_fail(p, "%s: '%s' is longer than %zu characters", key, v, size - 1);
    strcpy(out, v);
    return 0;
}

static int hc_code(struct hc_parse *p, const char *key, const char *v, nvmlReturn_t *out)
{
    for (size_t i = 0; i < HC_NCODES; i++)
        if (strcmp(hc_codes[i].name, v) == 0) {
            *out = hc_codes[i].code;
            return 0;
        }
    unsigned int code;
    if (hc_ulls(v, &(unsigned long long){0}, 1) == 0 && hc_uint(p, key, v, &code) == 0) {
        *out = (nvmlReturn_t)code;
        return 0;
    }
    return hc_fail(p, "%s: unknown NVML return code '%s'", key, v);
}

/* "<symbol> <code>" */
static int hc_error_line(struct hc_parse *p, const char *key, const char *v, struct hc_err *errs,
                         unsigned int *n)
{
    char sym[80];
    const char *sp = strchr(v, ' ');
    if (!sp || (size_t)(sp - v) >= sizeof(sym))
        return hc_fail(p, "%s: expected '<nvml symbol> <return code>', got '%s'", key, v);
    memcpy(sym, v, (size_t)(sp - v));
    sym[sp - v] = '\0';
    while (*sp == ' ')
        sp++;
    if (*n >= HC_MAX_ERRORS)
        return hc_fail(p, "%s: more than %d error overrides", key, HC_MAX_ERRORS);
    if (hc_code(p, key, sp, &errs[*n].code) != 0)
        return -1;
    strcpy(errs[*n].sym, sym);
    (*n)++;
    return 0;
}

/* "DDDDDDDD:BB:DD.F" or "DDDD:BB:DD.F" */
static int hc_pci(struct hc_parse *p, const char *key, const char *v, struct hc_gpu *g)
{
    unsigned int d, b, dev, f;
    char tail;
    if (sscanf(v, "%x:%x:%x.%x%c", &d, &b, &dev, &f, &tail) != 4 || b > 0xff || dev > 0x1f ||
        f > 7)
        return hc_fail(p, "%s: expected a PCI address like 00000000:17:00.0, got '%s'", key, v);
    g->domain = d;
    g->bus = b;
    g->device = dev;
    g->function = f;
    g->has_pci = 1;
    return 0;
}

static const char *const hc_sample_names[HC_NSAMPLE_TYPES] = {"gpu", "memory", "enc", "dec"};

static int hc_gpu_key(struct hc_parse *p, const char *key, const char *field, const char *v,
                      struct hc_gpu *g)
{
    unsigned long long t[9];
#define U32(name, dst)                                                                            \
    if (strcmp(field, name) == 0)                                                                 \
    return hc_uint(p, key, v, &(dst))
#define U64(name, dst)                                                                            \
    if (strcmp(field, name) == 0)                                                                 \
    return hc_ull(p, key, v, &(dst))
    if (strcmp(field, "uuid") == 0)
        return hc_str(p, key, v, g->uuid, sizeof(g->uuid));
    if (strcmp(field, "name") == 0)
        return hc_str(p, key, v, g->name, sizeof(g->name));
    if (strcmp(field, "pci_bus_id") == 0)
        return hc_pci(p, key, v, g);
    U32("pci_device_id", g->pci_device_id);
    U32("pci_subsystem_id", g->pci_subsystem_id);
    U64("memory_total", g->memory_total);
    U64("memory_used", g->memory_used);
    U64("memory_reserved", g->memory_reserved);
    U32("power_mw", g->power_mw);
    U64("energy_mj", g->energy_mj);
    U32("temperature_c", g->temperature_c);
    U32("sm_clock_mhz", g->sm_clock_mhz);
    U32("mem_clock_mhz", g->mem_clock_mhz);
    U64("clocks_event_reasons", g->clocks_event_reasons);
    U64("ecc_corrected_volatile",
        g->ecc[NVML_MEMORY_ERROR_TYPE_CORRECTED][NVML_VOLATILE_ECC]);
    U64("ecc_corrected_aggregate",
        g->ecc[NVML_MEMORY_ERROR_TYPE_CORRECTED][NVML_AGGREGATE_ECC]);
    U64("ecc_uncorrected_volatile",
        g->ecc[NVML_MEMORY_ERROR_TYPE_UNCORRECTED][NVML_VOLATILE_ECC]);
    U64("ecc_uncorrected_aggregate",
        g->ecc[NVML_MEMORY_ERROR_TYPE_UNCORRECTED][NVML_AGGREGATE_ECC]);
    U32("remapped_correctable", g->remapped[0]);
    U32("remapped_uncorrectable", g->remapped[1]);
    U32("remapped_pending", g->remapped[2]);
    U32("remapped_failure", g->remapped[3]);
    U32("pcie_replay", g->pcie_replay);
    U32("pcie_tx_kbps", g->pcie_tx_kbps);
    U32("pcie_rx_kbps", g->pcie_rx_kbps);
    U32("persistence_mode", g->persistence_mode);
    U32("compute_mode", g->compute_mode);
    U32("mig_mode", g->mig_mode);
    if (strcmp(field, "mig_pending_mode") == 0) {
        g->has_mig_pending = 1;
        return hc_uint(p, key, v, &g->mig_pending_mode);
    }
    if (strcmp(field, "lost") == 0)
        return hc_uint(p, key, v, (unsigned int *)&g->lost);
    if (strcmp(field, "handle_lost") == 0)
        return hc_uint(p, key, v, (unsigned int *)&g->handle_lost);
    if (strcmp(field, "nvlink_count") == 0) {
        if (hc_uint(p, key, v, &g->nvlink_count) != 0)
            return -1;
        if (g->nvlink_count > NVML_NVLINK_MAX_LINKS)
            return hc_fail(p, "%s: at most %d links", key, NVML_NVLINK_MAX_LINKS);
        return 0;
    }
    if (strncmp(field, "nvlink.", 7) == 0) {
        char *end;
        unsigned long link = strtoul(field + 7, &end, 10);
        if (end == field + 7 || *end != '\0' || link >= NVML_NVLINK_MAX_LINKS)
            return hc_fail(p, "%s: bad link number", key);
        if (hc_ulls(v, t, 1 + NVML_NVLINK_ERROR_COUNT) != 0)
            return hc_fail(p, "%s: expected '<active> <replay> <recovery> <crc_flit> "
                              "<crc_data> <ecc_data>', got '%s'", key, v);
        g->links[link].active = t[0] ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
        for (int c = 0; c < NVML_NVLINK_ERROR_COUNT; c++)
            g->links[link].counter[c] = t[1 + c];
        return 0;
    }
    if (strncmp(field, "sample.", 7) == 0) {
        for (int s = 0; s < HC_NSAMPLE_TYPES; s++) {
            if (strcmp(field + 7, hc_sample_names[s]) != 0)
                continue;
            if (hc_ulls(v, t, 2) != 0 || t[1] > 0xffffffffULL)
                return hc_fail(p, "%s: expected '<timestamp_us> <value>', got '%s'", key, v);
            if (g->nsamples[s] >= HC_MAX_SAMPLES)
                return hc_fail(p, "%s: more than %d samples", key, HC_MAX_SAMPLES);
            g->samples[s][g->nsamples[s]].ts = t[0];
            g->samples[s][g->nsamples[s]].value = (unsigned int)t[1];
            g->nsamples[s]++;
            return 0;
        }
        return hc_fail(p, "%s: sample type must be gpu, memory, enc or dec", key);
    }
    if (strcmp(field, "xid") == 0) {
        if (g->nxids >= HC_MAX_XIDS)
            return hc_fail(p, "%s: more than %d Xid events", key, HC_MAX_XIDS);
        struct hc_xid *x = &g->xids[g->nxids];
        if (hc_ulls(v, t, 1) == 0) {
            x->xid = t[0];
            x->gpu_instance_id = x->compute_instance_id = 0xFFFFFFFFu;
        } else if (hc_ulls(v, t, 3) == 0 && t[1] <= 0xffffffffULL && t[2] <= 0xffffffffULL) {
            x->xid = t[0];
            x->gpu_instance_id = (unsigned int)t[1];
            x->compute_instance_id = (unsigned int)t[2];
        } else {
            return hc_fail(p, "%s: expected '<xid> [<gpu_instance_id> <compute_instance_id>]'",
                           key);
        }
        g->nxids++;
        return 0;
    }
    if (strcmp(field, "vgpu_scheduler") == 0) {
        if (hc_ulls(v, t, 4) != 0)
            return hc_fail(p, "%s: expected '<policy> <arr_mode> <avg_factor> <timeslice>'",
                           key);
        g->sched_policy = (unsigned int)t[0];
        g->sched_arr_mode = (unsigned int)t[1];
        g->sched_avg_factor = (unsigned int)t[2];
        g->sched_timeslice = (unsigned int)t[3];
        return 0;
    }
    if (strcmp(field, "error") == 0)
        return hc_error_line(p, key, v, g->errors, &g->nerrors);
    U64("retired_sbe", g->retired[0]);
    U64("retired_dbe", g->retired[1]);
    U64("retired_pending", g->retired[2]);
    U32("pcie_replay_rollover", g->pcie_replay_rollover);
    U32("pcie_l0_to_recovery", g->pcie_l0_to_recovery);
    if (strcmp(field, "power_average_mw") == 0) {
        g->has_power_average = 1;
        return hc_uint(p, key, v, &g->power_average_mw);
    }
    if (strncmp(field, "nvlink_throughput.", 18) == 0) {
        char *end;
        unsigned long link = strtoul(field + 18, &end, 10);
        if (end == field + 18 || *end != '\0' || link >= NVML_NVLINK_MAX_LINKS)
            return hc_fail(p, "%s: bad link number", key);
        if (hc_ulls(v, t, 2) != 0)
            return hc_fail(p, "%s: expected '<tx_kib> <rx_kib>', got '%s'", key, v);
        g->links[link].tx_kib = t[0];
        g->links[link].rx_kib = t[1];
        return 0;
    }
    if (strcmp(field, "field_error") == 0) {
        char *sp = strchr(v, ' ');
        unsigned int id;
        if (!sp)
            return hc_fail(p, "%s: expected '<field id> <error>', got '%s'", key, v);
        *sp = '\0';
        if (hc_uint(p, key, v, &id) != 0)
            return -1;
        if (g->nfield_errors >= HC_MAX_FIELD_ERRORS)
            return hc_fail(p, "%s: more than %d field errors", key, HC_MAX_FIELD_ERRORS);
        g->field_errors[g->nfield_errors].field_id = id;
        if (hc_code(p, key, sp + 1, &g->field_errors[g->nfield_errors].code) != 0)
            return -1;
        g->nfield_errors++;
        return 0;
    }
    U32("gpm_supported", g->gpm_supported);
    if (strcmp(field, "gpm") == 0) {
        /* gpm <gpu_instance_id|whole> <metric_id> <value> */
        char gi_text[32];
        unsigned int metric;
        double value;
        int used = 0;
        if (sscanf(v, "%31s %u %lf%n", gi_text, &metric, &value, &used) != 3 || v[used] != '\0')
            return hc_fail(p, "%s: expected '<gpu_instance_id|whole> <metric id> <value>'", key);
        unsigned int gi = 0xFFFFFFFFu;
        if (strcmp(gi_text, "whole") != 0 && hc_uint(p, key, gi_text, &gi) != 0)
            return -1;
        struct hc_gpm_set *set = NULL;
        for (unsigned int i = 0; i < g->ngpm_sets; i++)
            if (g->gpm_sets[i].gpu_instance_id == gi)
                set = &g->gpm_sets[i];
        if (!set) {
            if (g->ngpm_sets >= 1 + HC_MAX_GPU_INSTANCES)
                return hc_fail(p, "%s: more than %d GPM sets", key, 1 + HC_MAX_GPU_INSTANCES);
            set = &g->gpm_sets[g->ngpm_sets++];
            set->gpu_instance_id = gi;
        }
        if (set->count >= HC_MAX_GPM)
            return hc_fail(p, "%s: more than %d GPM metrics", key, HC_MAX_GPM);
        set->values[set->count].metric_id = metric;
        set->values[set->count].value = value;
        set->count++;
        return 0;
    }
    if (strcmp(field, "fabric") == 0) {
        if (hc_ulls(v, t, 5) != 0)
            return hc_fail(p, "%s: expected '<state> <status> <clique> <health mask> "
                              "<health summary>'", key);
        g->has_fabric = 1;
        g->fabric_state = (unsigned int)t[0];
        g->fabric_status = (unsigned int)t[1];
        g->fabric_clique_id = (unsigned int)t[2];
        g->fabric_health_mask = (unsigned int)t[3];
        g->fabric_health_summary = (unsigned int)t[4];
        return 0;
    }
#undef U32
#undef U64
    return hc_fail(p, "unknown key '%s'", key);
}

static int hc_vgpu_key(struct hc_parse *p, const char *key, const char *field, const char *v,
                       struct hc_vgpu *vg)
{
    unsigned long long t[9];
    if (strcmp(field, "gpu") == 0) {
        vg->has_gpu = 1;
        return hc_uint(p, key, v, &vg->gpu);
    }
    if (strcmp(field, "id") == 0) {
        vg->has_id = 1;
        return hc_uint(p, key, v, &vg->id);
    }
    if (strcmp(field, "vm_id") == 0)
        return hc_str(p, key, v, vg->vm_id, sizeof(vg->vm_id));
    if (strcmp(field, "vm_id_type") == 0)
        return hc_uint(p, key, v, &vg->vm_id_type);
    if (strcmp(field, "uuid") == 0)
        return hc_str(p, key, v, vg->uuid, sizeof(vg->uuid));
    if (strcmp(field, "mdev_uuid") == 0)
        return hc_str(p, key, v, vg->mdev_uuid, sizeof(vg->mdev_uuid));
    if (strcmp(field, "type_id") == 0)
        return hc_uint(p, key, v, &vg->type_id);
    if (strcmp(field, "type_name") == 0)
        return hc_str(p, key, v, vg->type_name, sizeof(vg->type_name));
    if (strcmp(field, "fb_usage") == 0)
        return hc_ull(p, key, v, &vg->fb_usage);
    if (strcmp(field, "license") == 0) {
        if (hc_ulls(v, t, 9) != 0)
            return hc_fail(p, "%s: expected '<licensed> <state> <year> <month> <day> <hour> "
                              "<min> <sec> <expiry status>'", key);
        vg->licensed = (unsigned int)t[0];
        vg->license_state = (unsigned int)t[1];
        vg->exp_year = (unsigned int)t[2];
        vg->exp_month = (unsigned int)t[3];
        vg->exp_day = (unsigned int)t[4];
        vg->exp_hour = (unsigned int)t[5];
        vg->exp_min = (unsigned int)t[6];
        vg->exp_sec = (unsigned int)t[7];
        vg->exp_status = (unsigned int)t[8];
        return 0;
    }
    if (strcmp(field, "gpu_instance_id") == 0)
        return hc_uint(p, key, v, &vg->gpu_instance_id);
    if (strcmp(field, "gpu_pci_id") == 0) {
        vg->has_pci_id = 1;
        return hc_str(p, key, v, vg->pci_id, sizeof(vg->pci_id));
    }
    if (strcmp(field, "encoder") == 0 || strcmp(field, "fbc") == 0) {
        unsigned int *dst = field[0] == 'e' ? vg->encoder : vg->fbc;
        if (hc_ulls(v, t, 3) != 0)
            return hc_fail(p, "%s: expected '<sessions> <fps> <latency_us>'", key);
        for (int i = 0; i < 3; i++)
            dst[i] = (unsigned int)t[i];
        return 0;
    }
    if (strcmp(field, "sample") == 0) {
        if (hc_ulls(v, t, 5) != 0)
            return hc_fail(p, "%s: expected '<timestamp_us> <sm> <mem> <enc> <dec>'", key);
        if (vg->nsamples >= HC_MAX_VGPU_SAMPLES)
            return hc_fail(p, "%s: more than %d samples", key, HC_MAX_VGPU_SAMPLES);
        struct hc_vsample *s = &vg->samples[vg->nsamples++];
        s->ts = t[0];
        s->sm = (unsigned int)t[1];
        s->mem = (unsigned int)t[2];
        s->enc = (unsigned int)t[3];
        s->dec = (unsigned int)t[4];
        return 0;
    }
    if (strcmp(field, "error") == 0)
        return hc_error_line(p, key, v, vg->errors, &vg->nerrors);
    return hc_fail(p, "unknown key '%s'", key);
}

/* "<prefix>.<index>.<field>" -> index, field */
static int hc_indexed(const char *key, const char *prefix, unsigned int max, unsigned int *index,
                      const char **field)
{
    size_t n = strlen(prefix);
    if (strncmp(key, prefix, n) != 0 || key[n] != '.')
        return 0;
    char *end;
    unsigned long i = strtoul(key + n + 1, &end, 10);
    if (end == key + n + 1 || *end != '.' || i >= max)
        return -1;
    *index = (unsigned int)i;
    *field = end + 1;
    return 1;
}

static int hc_line(struct hc_parse *p, struct hc_scenario *s, char *line, unsigned int *max_gpu,
                   unsigned int *max_vgpu)
{
    size_t len = strlen(line);
    while (len && isspace((unsigned char)line[len - 1]))
        line[--len] = '\0';
    char *key = line;
    while (isspace((unsigned char)*key))
        key++;
    if (*key == '\0' || *key == '#')
        return 0;
    char *v = key;
    while (*v && !isspace((unsigned char)*v))
        v++;
    if (*v) {
        *v++ = '\0';
        while (isspace((unsigned char)*v))
            v++;
    }
    unsigned int i;
    const char *field;
    int r;
    if ((r = hc_indexed(key, "gpu", HC_MAX_GPUS, &i, &field)) != 0) {
        if (r < 0)
            return hc_fail(p, "bad GPU key '%s' (at most %d GPUs)", key, HC_MAX_GPUS);
        if (i + 1 > *max_gpu)
            *max_gpu = i + 1;
        return hc_gpu_key(p, key, field, v, &s->gpus[i]);
    }
    if ((r = hc_indexed(key, "vgpu", HC_MAX_VGPUS, &i, &field)) != 0) {
        if (r < 0)
            return hc_fail(p, "bad vGPU key '%s' (at most %d vGPUs)", key, HC_MAX_VGPUS);
        if (i + 1 > *max_vgpu)
            *max_vgpu = i + 1;
        return hc_vgpu_key(p, key, field, v, &s->vgpus[i]);
    }
    if (strcmp(key, "format") == 0)
        return strcmp(v, "1") == 0 ? 0 : hc_fail(p, "unsupported format '%s'", v);
    if (strcmp(key, "driver_version") == 0)
        return hc_str(p, key, v, s->driver_version, sizeof(s->driver_version));
    if (strcmp(key, "nvml_version") == 0)
        return hc_str(p, key, v, s->nvml_version, sizeof(s->nvml_version));
    if (strcmp(key, "init_error") == 0)
        return hc_code(p, key, v, &s->init_error);
    if (strcmp(key, "vgpu_manager") == 0)
        return hc_uint(p, key, v, (unsigned int *)&s->vgpu_manager);
    if (strcmp(key, "event_wait_max_ms") == 0) {
        unsigned int ms;
        if (hc_uint(p, key, v, &ms) != 0)
            return -1;
        s->event_wait_max_ms = (long)ms;
        return 0;
    }
    if (strcmp(key, "gpu_count") == 0) {
        if (hc_uint(p, key, v, &s->gpu_count) != 0)
            return -1;
        return s->gpu_count <= HC_MAX_GPUS ? 0 : hc_fail(p, "at most %d GPUs", HC_MAX_GPUS);
    }
    if (strcmp(key, "vgpu_count") == 0) {
        if (hc_uint(p, key, v, &s->vgpu_count) != 0)
            return -1;
        return s->vgpu_count <= HC_MAX_VGPUS ? 0 : hc_fail(p, "at most %d vGPUs", HC_MAX_VGPUS);
    }
    if (strcmp(key, "error") == 0)
        return hc_error_line(p, key, v, s->errors, &s->nerrors);
    if (strcmp(key, "conf_compute") == 0) {
        unsigned long long t[4];
        if (hc_ulls(v, t, 4) != 0)
            return hc_fail(p, "%s: expected '<environment> <ccFeature> <devToolsMode> "
                              "<gpus ready>'", key);
        s->has_cc = 1;
        s->cc_environment = (unsigned int)t[0];
        s->cc_feature = (unsigned int)t[1];
        s->cc_devtools_mode = (unsigned int)t[2];
        s->cc_gpus_ready = (unsigned int)t[3];
        return 0;
    }
    return hc_fail(p, "unknown key '%s'", key);
}

static int hc_parse_file(const char *path, struct hc_scenario *s, struct hc_parse *p)
{
    memset(s, 0, sizeof(*s));
    s->event_wait_max_ms = -1;
    for (unsigned int i = 0; i < HC_MAX_VGPUS; i++)
        s->vgpus[i].gpu_instance_id = INVALID_GPU_INSTANCE_ID;
    p->path = path;
    p->line = 0;
    p->msg[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return hc_fail(p, "cannot open: %s", strerror(errno));
    char line[HC_LINE];
    unsigned int max_gpu = 0, max_vgpu = 0;
    int rc = 0;
    while (fgets(line, sizeof(line), f)) {
        p->line++;
        if (!strchr(line, '\n') && !feof(f)) {
            rc = hc_fail(p, "line longer than %d characters", HC_LINE - 2);
            break;
        }
        if ((rc = hc_line(p, s, line, &max_gpu, &max_vgpu)) != 0)
            break;
    }
    fclose(f);
    if (rc != 0)
        return rc;
    p->line = 0;
    if (max_gpu > s->gpu_count)
        return hc_fail(p, "gpu.%u.* given but gpu_count is %u", max_gpu - 1, s->gpu_count);
    if (max_vgpu > s->vgpu_count)
        return hc_fail(p, "vgpu.%u.* given but vgpu_count is %u", max_vgpu - 1, s->vgpu_count);
    for (unsigned int i = 0; i < s->gpu_count; i++) {
        struct hc_gpu *g = &s->gpus[i];
        if (!g->has_mig_pending)
            g->mig_pending_mode = g->mig_mode;
        if (!g->has_pci)
            return hc_fail(p, "gpu.%u.pci_bus_id missing", i);
    }
    for (unsigned int i = 0; i < s->vgpu_count; i++) {
        struct hc_vgpu *v = &s->vgpus[i];
        if (!v->has_gpu || v->gpu >= s->gpu_count)
            return hc_fail(p, "vgpu.%u.gpu missing or not below gpu_count", i);
        if (!v->has_id || v->id == 0)
            return hc_fail(p, "vgpu.%u.id missing or 0 (0 is never a valid instance)", i);
        for (unsigned int j = 0; j < i; j++)
            if (s->vgpus[j].id == v->id)
                return hc_fail(p, "vgpu.%u.id %u repeats vgpu.%u.id", i, v->id, j);
    }
    return 0;
}

/* Re-reads the scenario when forced or when the file's identity changed. Lock held. */
static void hc_refresh(int force)
{
    struct stat st;
    if (hc_path[0] == '\0')
        return;
    if (stat(hc_path, &st) != 0) {
        if (force) {
            fprintf(stderr, "nvml_stub: %s: %s\n", hc_path, strerror(errno));
            hc_broken = 1;
        }
        return; /* vanished mid-run: keep answering from what was read last */
    }
    if (!force && hc_have_stat && st.st_ino == hc_stat.st_ino && st.st_dev == hc_stat.st_dev &&
        st.st_size == hc_stat.st_size && st.st_mtim.tv_sec == hc_stat.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == hc_stat.st_mtim.tv_nsec)
        return;
    hc_stat = st;
    hc_have_stat = 1;
    struct hc_scenario *next = calloc(1, sizeof(*next));
    struct hc_parse p;
    if (!next) {
        hc_broken = 1;
        return;
    }
    if (hc_parse_file(hc_path, next, &p) != 0) {
        if (p.line)
            fprintf(stderr, "nvml_stub: %s:%u: %s\n", hc_path, p.line, p.msg);
        else
            fprintf(stderr, "nvml_stub: %s: %s\n", hc_path, p.msg);
        free(next);
        hc_broken = 1;
        return;
    }
    free(hc_scn);
    hc_scn = next;
    hc_broken = 0;
    hc_reloads++;
}

/* ------------------------------------------------------------------------------------------ */
/* Call prologues: each takes the lock, and on failure releases it before returning.          */

static nvmlReturn_t hc_override(const struct hc_err *errs, unsigned int n, const char *sym)
{
    for (unsigned int i = 0; i < n; i++)
        if (strcmp(errs[i].sym, sym) == 0)
            return errs[i].code;
    return NVML_SUCCESS;
}

/* For calls that need an initialised library but no device. */
static nvmlReturn_t hc_enter(const char *sym)
{
    hc_lock();
    if (hc_refcount == 0) {
        hc_unlock();
        return NVML_ERROR_UNINITIALIZED;
    }
    hc_refresh(0);
    nvmlReturn_t rc = hc_broken || !hc_scn ? NVML_ERROR_UNKNOWN
                                           : hc_override(hc_scn->errors, hc_scn->nerrors, sym);
    if (rc != NVML_SUCCESS)
        hc_unlock();
    return rc;
}

static nvmlReturn_t hc_enter_device(nvmlDevice_t device, const char *sym, struct hc_gpu **out)
{
    nvmlReturn_t rc = hc_enter(sym);
    if (rc != NVML_SUCCESS)
        return rc;
    if (device < &hc_devices[0] || device >= &hc_devices[HC_MAX_GPUS] ||
        device->magic != HC_DEVICE_MAGIC || device->index >= hc_scn->gpu_count) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        struct hc_gpu *g = &hc_scn->gpus[device->index];
        if (g->lost)
            rc = NVML_ERROR_GPU_IS_LOST;
        else
            rc = hc_override(g->errors, g->nerrors, sym);
        *out = g;
    }
    if (rc != NVML_SUCCESS)
        hc_unlock();
    return rc;
}

static nvmlReturn_t hc_enter_vgpu(nvmlVgpuInstance_t id, const char *sym, struct hc_vgpu **out)
{
    nvmlReturn_t rc = hc_enter(sym);
    if (rc != NVML_SUCCESS)
        return rc;
    struct hc_vgpu *found = NULL;
    if (id == 0) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        for (unsigned int i = 0; i < hc_scn->vgpu_count; i++)
            if (hc_scn->vgpus[i].id == id)
                found = &hc_scn->vgpus[i];
        if (!found)
            rc = NVML_ERROR_NOT_FOUND;
        else if (hc_scn->gpus[found->gpu].lost)
            rc = NVML_ERROR_GPU_IS_LOST;
        else
            rc = hc_override(found->errors, found->nerrors, sym);
    }
    *out = found;
    if (rc != NVML_SUCCESS)
        hc_unlock();
    return rc;
}

#define ENTER(sym)                                                                                \
    do {                                                                                          \
        nvmlReturn_t enter_rc_ = hc_enter(sym);                                                   \
        if (enter_rc_ != NVML_SUCCESS)                                                            \
            return enter_rc_;                                                                     \
    } while (0)

#define ENTER_DEVICE(device, sym, g)                                                              \
    struct hc_gpu *g = NULL;                                                                      \
    do {                                                                                          \
        nvmlReturn_t enter_rc_ = hc_enter_device(device, sym, &g);                                \
        if (enter_rc_ != NVML_SUCCESS)                                                            \
            return enter_rc_;                                                                     \
    } while (0)

#define ENTER_VGPU(id, sym, v)                                                                    \
    struct hc_vgpu *v = NULL;                                                                     \
    do {                                                                                          \
        nvmlReturn_t enter_rc_ = hc_enter_vgpu(id, sym, &v);                                      \
        if (enter_rc_ != NVML_SUCCESS)                                                            \
            return enter_rc_;                                                                     \
    } while (0)

/* Copies a NUL-terminated string into a caller buffer of `size` bytes, never writing more. */
static nvmlReturn_t hc_copy(char *dst, unsigned int size, const char *src)
{
    size_t need = strlen(src) + 1;
    if (!dst)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (size < need)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, need);
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------------------------------ */
/* Initialisation                                                                              */

static nvmlReturn_t hc_init(void)
{
    hc_lock();
    const char *path = getenv("HC_NVML_SCENARIO");
    if (!path || !*path) {
        fprintf(stderr, "nvml_stub: HC_NVML_SCENARIO is not set; nvmlInit fails with "
                        "NVML_ERROR_UNKNOWN\n");
        DONE(NVML_ERROR_UNKNOWN);
    }
    if (strlen(path) >= sizeof(hc_path)) {
        fprintf(stderr, "nvml_stub: HC_NVML_SCENARIO is too long\n");
        DONE(NVML_ERROR_UNKNOWN);
    }
    strcpy(hc_path, path);
    hc_have_stat = 0;
    hc_refresh(1);
    if (hc_broken || !hc_scn)
        DONE(NVML_ERROR_UNKNOWN);
    if (hc_scn->init_error != NVML_SUCCESS)
        DONE(hc_scn->init_error);
    hc_refcount++;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    return hc_init();
}

HC_EXPORT nvmlReturn_t nvmlInit_v2(void) { return hc_init(); }

HC_EXPORT nvmlReturn_t nvmlInit(void) { return hc_init(); }

HC_EXPORT nvmlReturn_t nvmlShutdown(void)
{
    hc_lock();
    if (hc_refcount == 0)
        DONE(NVML_ERROR_UNINITIALIZED);
    hc_refcount--;
    DONE(NVML_SUCCESS);
}

/* ------------------------------------------------------------------------------------------ */
/* System                                                                                      */

HC_EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    ENTER(__func__);
    DONE(hc_copy(version, length, hc_scn->driver_version));
}

HC_EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    ENTER(__func__);
    DONE(hc_copy(version, length, hc_scn->nvml_version));
}

static nvmlReturn_t hc_device_count(unsigned int *deviceCount)
{
    ENTER("nvmlDeviceGetCount_v2");
    if (!deviceCount)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *deviceCount = hc_scn->gpu_count;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    return hc_device_count(deviceCount);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount)
{
    return hc_device_count(deviceCount);
}

static nvmlReturn_t hc_handle_by_index(unsigned int index, nvmlDevice_t *device)
{
    ENTER("nvmlDeviceGetHandleByIndex_v2");
    if (!device || index >= hc_scn->gpu_count)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    struct hc_gpu *g = &hc_scn->gpus[index];
    if (g->lost && g->handle_lost)
        DONE(NVML_ERROR_GPU_IS_LOST);
    nvmlReturn_t rc = hc_override(g->errors, g->nerrors, "nvmlDeviceGetHandleByIndex_v2");
    if (rc != NVML_SUCCESS)
        DONE(rc);
    hc_devices[index].magic = HC_DEVICE_MAGIC;
    hc_devices[index].index = index;
    *device = &hc_devices[index];
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    return hc_handle_by_index(index, device);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return hc_handle_by_index(index, device);
}

/* ------------------------------------------------------------------------------------------ */
/* Device identity                                                                             */

HC_EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    ENTER_DEVICE(device, __func__, g);
    DONE(hc_copy(uuid, length, g->uuid));
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    ENTER_DEVICE(device, __func__, g);
    DONE(hc_copy(name, length, g->name));
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    ENTER_DEVICE(device, __func__, g);
    if (!pci)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    memset(pci, 0, sizeof(*pci));
    snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT,
             g->domain & 0xffffu, g->bus, g->device);
    snprintf(pci->busId, sizeof(pci->busId), NVML_DEVICE_PCI_BUS_ID_FMT, g->domain, g->bus,
             g->device);
    pci->domain = g->domain;
    pci->bus = g->bus;
    pci->device = g->device;
    pci->pciDeviceId = g->pci_device_id;
    pci->pciSubSystemId = g->pci_subsystem_id;
    DONE(NVML_SUCCESS);
}

/* ------------------------------------------------------------------------------------------ */
/* Device telemetry                                                                            */

HC_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    ENTER_DEVICE(device, __func__, g);
    if (!memory)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    /* v1: "used" includes the reserved memory; free + used == total. */
    unsigned long long used = g->memory_used + g->memory_reserved;
    memory->total = g->memory_total;
    memory->used = used;
    memory->free = g->memory_total > used ? g->memory_total - used : 0;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    ENTER_DEVICE(device, __func__, g);
    if (!memory)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    if (memory->version != nvmlMemory_v2)
        DONE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    unsigned long long taken = g->memory_used + g->memory_reserved;
    memory->total = g->memory_total;
    memory->reserved = g->memory_reserved;
    memory->used = g->memory_used;
    memory->free = g->memory_total > taken ? g->memory_total - taken : 0;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power)
{
    ENTER_DEVICE(device, __func__, g);
    if (!power)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *power = g->power_mw;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device,
                                                           unsigned long long *energy)
{
    ENTER_DEVICE(device, __func__, g);
    if (!energy)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *energy = g->energy_mj;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device,
                                                nvmlTemperatureSensors_t sensorType,
                                                unsigned int *temp)
{
    ENTER_DEVICE(device, __func__, g);
    if (!temp || (unsigned int)sensorType >= NVML_TEMPERATURE_COUNT)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    if (sensorType != NVML_TEMPERATURE_GPU)
        DONE(NVML_ERROR_NOT_SUPPORTED);
    *temp = g->temperature_c;
    DONE(NVML_SUCCESS);
}

/* The replacement of nvmlDeviceGetTemperature in nvml.h 13; same answers, one override name. */
HC_EXPORT nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t device,
                                                 nvmlTemperature_t *temperature)
{
    ENTER_DEVICE(device, "nvmlDeviceGetTemperature", g);
    if (!temperature || (unsigned int)temperature->sensorType >= NVML_TEMPERATURE_COUNT)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    if (temperature->version != nvmlTemperature_v1)
        DONE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (temperature->sensorType != NVML_TEMPERATURE_GPU)
        DONE(NVML_ERROR_NOT_SUPPORTED);
    temperature->temperature = (int)g->temperature_c;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, nvmlClockType_t type,
                                              unsigned int *clock)
{
    ENTER_DEVICE(device, __func__, g);
    if (!clock || (unsigned int)type >= NVML_CLOCK_COUNT)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    switch (type) {
    case NVML_CLOCK_GRAPHICS:
    case NVML_CLOCK_SM:
        *clock = g->sm_clock_mhz;
        break;
    case NVML_CLOCK_MEM:
        *clock = g->mem_clock_mhz;
        break;
    default:
        DONE(NVML_ERROR_NOT_SUPPORTED);
    }
    DONE(NVML_SUCCESS);
}

static nvmlReturn_t hc_clocks_event_reasons(nvmlDevice_t device, unsigned long long *reasons)
{
    ENTER_DEVICE(device, "nvmlDeviceGetCurrentClocksEventReasons", g);
    if (!reasons)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *reasons = g->clocks_event_reasons;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(nvmlDevice_t device,
                                                              unsigned long long *reasons)
{
    return hc_clocks_event_reasons(device, reasons);
}

/* Deprecated in nvml.h 13 but still exported by the driver; pynvml wraps both names. */
HC_EXPORT nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(nvmlDevice_t device,
                                                                 unsigned long long *reasons)
{
    return hc_clocks_event_reasons(device, reasons);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device,
                                                   nvmlMemoryErrorType_t errorType,
                                                   nvmlEccCounterType_t counterType,
                                                   unsigned long long *eccCounts)
{
    ENTER_DEVICE(device, __func__, g);
    if (!eccCounts || (unsigned int)errorType >= NVML_MEMORY_ERROR_TYPE_COUNT ||
        (unsigned int)counterType >= NVML_ECC_COUNTER_TYPE_COUNT)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *eccCounts = g->ecc[errorType][counterType];
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows,
                                                 unsigned int *uncRows, unsigned int *isPending,
                                                 unsigned int *failureOccurred)
{
    ENTER_DEVICE(device, __func__, g);
    if (!corrRows || !uncRows || !isPending || !failureOccurred)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    if (g->mig_mode == NVML_DEVICE_MIG_ENABLE) /* nvml.h: not supported with MIG enabled */
        DONE(NVML_ERROR_NOT_SUPPORTED);
    *corrRows = g->remapped[0];
    *uncRows = g->remapped[1];
    *isPending = g->remapped[2];
    *failureOccurred = g->remapped[3];
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetPcieReplayCounter(nvmlDevice_t device, unsigned int *value)
{
    ENTER_DEVICE(device, __func__, g);
    if (!value)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *value = g->pcie_replay;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t device,
                                                   nvmlPcieUtilCounter_t counter,
                                                   unsigned int *value)
{
    ENTER_DEVICE(device, __func__, g);
    if (!value || (unsigned int)counter >= NVML_PCIE_UTIL_COUNT)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *value = counter == NVML_PCIE_UTIL_TX_BYTES ? g->pcie_tx_kbps : g->pcie_rx_kbps;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link,
                                                nvmlEnableState_t *isActive)
{
    ENTER_DEVICE(device, __func__, g);
    if (g->nvlink_count == 0)
        DONE(NVML_ERROR_NOT_SUPPORTED);
    if (!isActive || link >= g->nvlink_count)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *isActive = g->links[link].active ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetNvLinkErrorCounter(nvmlDevice_t device, unsigned int link,
                                                       nvmlNvLinkErrorCounter_t counter,
                                                       unsigned long long *counterValue)
{
    ENTER_DEVICE(device, __func__, g);
    if (g->nvlink_count == 0)
        DONE(NVML_ERROR_NOT_SUPPORTED);
    if (!counterValue || link >= g->nvlink_count ||
        (unsigned int)counter >= NVML_NVLINK_ERROR_COUNT)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *counterValue = g->links[link].counter[counter];
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t device, nvmlEnableState_t *mode)
{
    ENTER_DEVICE(device, __func__, g);
    if (!mode)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *mode = g->persistence_mode ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetComputeMode(nvmlDevice_t device, nvmlComputeMode_t *mode)
{
    ENTER_DEVICE(device, __func__, g);
    if (!mode)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *mode = (nvmlComputeMode_t)g->compute_mode;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode,
                                            unsigned int *pendingMode)
{
    ENTER_DEVICE(device, __func__, g);
    if (!currentMode || !pendingMode)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *currentMode = g->mig_mode;
    *pendingMode = g->mig_pending_mode;
    DONE(NVML_SUCCESS);
}

/*
 * Like the driver: with samples == NULL, sampleCount is set to the number of samples the buffer
 * holds (not only the newer ones: the second call may return fewer), NOT_FOUND if it holds none.
 * With a buffer, the samples newer than lastSeenTimeStamp are written oldest first, at most
 * *sampleCount of them; NOT_FOUND if there is none.
 */
HC_EXPORT nvmlReturn_t nvmlDeviceGetSamples(nvmlDevice_t device, nvmlSamplingType_t type,
                                            unsigned long long lastSeenTimeStamp,
                                            nvmlValueType_t *sampleValType,
                                            unsigned int *sampleCount, nvmlSample_t *samples)
{
    ENTER_DEVICE(device, __func__, g);
    if (!sampleValType || !sampleCount || (unsigned int)type >= NVML_SAMPLINGTYPE_COUNT)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    if (type < NVML_GPU_UTILIZATION_SAMPLES || type > NVML_DEC_UTILIZATION_SAMPLES)
        DONE(NVML_ERROR_NOT_SUPPORTED);
    if (g->mig_mode == NVML_DEVICE_MIG_ENABLE) /* nvml.h: utilization samples not with MIG */
        DONE(NVML_ERROR_NOT_SUPPORTED);
    unsigned int s = (unsigned int)type - NVML_GPU_UTILIZATION_SAMPLES;
    *sampleValType = NVML_VALUE_TYPE_UNSIGNED_INT;
    if (!samples) {
        if (g->nsamples[s] == 0)
            DONE(NVML_ERROR_NOT_FOUND);
        *sampleCount = g->nsamples[s];
        DONE(NVML_SUCCESS);
    }
    if (*sampleCount == 0)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    unsigned int n = 0;
    for (unsigned int i = 0; i < g->nsamples[s] && n < *sampleCount; i++) {
        if (g->samples[s][i].ts <= lastSeenTimeStamp)
            continue;
        memset(&samples[n], 0, sizeof(samples[n]));
        samples[n].timeStamp = g->samples[s][i].ts;
        samples[n].sampleValue.uiVal = g->samples[s][i].value;
        n++;
    }
    *sampleCount = n;
    DONE(n ? NVML_SUCCESS : NVML_ERROR_NOT_FOUND);
}

/* ------------------------------------------------------------------------------------------ */
/* Events                                                                                      */

HC_EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
    ENTER(__func__);
    if (!set)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    struct nvmlEventSet_st *es = calloc(1, sizeof(*es));
    if (!es)
        DONE(NVML_ERROR_MEMORY);
    es->magic = HC_EVENTSET_MAGIC;
    *set = es;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes,
                                                nvmlEventSet_t set)
{
    ENTER_DEVICE(device, __func__, g);
    (void)g;
    if (!set || set->magic != HC_EVENTSET_MAGIC)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    set->mask[device->index] |= eventTypes;
    DONE(NVML_SUCCESS);
}

/* One pending Xid for `set`, delivered once. Lock held. */
static int hc_next_event(nvmlEventSet_t set, nvmlEventData_t *data)
{
    for (unsigned int i = 0; i < hc_scn->gpu_count; i++) {
        const struct hc_gpu *g = &hc_scn->gpus[i];
        if (!(set->mask[i] & nvmlEventTypeXidCriticalError) || set->cursor[i] >= g->nxids)
            continue;
        const struct hc_xid *x = &g->xids[set->cursor[i]++];
        hc_devices[i].magic = HC_DEVICE_MAGIC;
        hc_devices[i].index = i;
        memset(data, 0, sizeof(*data));
        data->device = &hc_devices[i];
        data->eventType = nvmlEventTypeXidCriticalError;
        data->eventData = x->xid;
        data->gpuInstanceId = x->gpu_instance_id;
        data->computeInstanceId = x->compute_instance_id;
        return 1;
    }
    return 0;
}

static int hc_any_registered_lost(nvmlEventSet_t set)
{
    for (unsigned int i = 0; i < hc_scn->gpu_count; i++)
        if (set->mask[i] && hc_scn->gpus[i].lost)
            return 1;
    return 0;
}

/*
 * Delivers the registered GPUs' scenario Xids, each once per event set, in GPU order. With none
 * pending it waits up to timeoutms (capped by the scenario's event_wait_max_ms), re-reading the
 * scenario every 5 ms so that Xids written meanwhile are delivered, then returns TIMEOUT, or
 * GPU_IS_LOST when a registered GPU is lost.
 */
HC_EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                           unsigned int timeoutms)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        ENTER(__func__);
        if (!set || set->magic != HC_EVENTSET_MAGIC || !data)
            DONE(NVML_ERROR_INVALID_ARGUMENT);
        if (hc_next_event(set, data))
            DONE(NVML_SUCCESS);
        if (hc_any_registered_lost(set))
            DONE(NVML_ERROR_GPU_IS_LOST);
        long limit = (long)timeoutms;
        if (hc_scn->event_wait_max_ms >= 0 && hc_scn->event_wait_max_ms < limit)
            limit = hc_scn->event_wait_max_ms;
        hc_unlock();
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed = (now.tv_sec - start.tv_sec) * 1000L +
                       (now.tv_nsec - start.tv_nsec) / 1000000L;
        if (elapsed >= limit)
            return NVML_ERROR_TIMEOUT;
        long step = limit - elapsed < 5 ? limit - elapsed : 5;
        struct timespec ts = {0, step * 1000000L};
        nanosleep(&ts, NULL);
    }
}

HC_EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
    ENTER(__func__);
    if (!set || set->magic != HC_EVENTSET_MAGIC)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    set->magic = 0;
    free(set);
    DONE(NVML_SUCCESS);
}

/* ------------------------------------------------------------------------------------------ */
/* vGPU                                                                                        */

HC_EXPORT nvmlReturn_t nvmlDeviceGetActiveVgpus(nvmlDevice_t device, unsigned int *vgpuCount,
                                                nvmlVgpuInstance_t *vgpuInstances)
{
    ENTER_DEVICE(device, __func__, g);
    (void)g;
    if (!vgpuCount)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    if (!hc_scn->vgpu_manager)
        DONE(NVML_ERROR_NOT_SUPPORTED);
    unsigned int n = 0;
    for (unsigned int i = 0; i < hc_scn->vgpu_count; i++)
        n += hc_scn->vgpus[i].gpu == device->index;
    if (n == 0) {
        *vgpuCount = 0;
        DONE(NVML_SUCCESS);
    }
    if (*vgpuCount < n) {
        *vgpuCount = n;
        DONE(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    if (!vgpuInstances)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    unsigned int k = 0;
    for (unsigned int i = 0; i < hc_scn->vgpu_count; i++)
        if (hc_scn->vgpus[i].gpu == device->index)
            vgpuInstances[k++] = hc_scn->vgpus[i].id;
    *vgpuCount = n;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlVgpuInstanceGetVmID(nvmlVgpuInstance_t vgpuInstance, char *vmId,
                                               unsigned int size, nvmlVgpuVmIdType_t *vmIdType)
{
    ENTER_VGPU(vgpuInstance, __func__, v);
    if (!vmIdType)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    nvmlReturn_t rc = hc_copy(vmId, size, v->vm_id);
    if (rc == NVML_SUCCESS)
        *vmIdType = (nvmlVgpuVmIdType_t)v->vm_id_type;
    DONE(rc);
}

HC_EXPORT nvmlReturn_t nvmlVgpuInstanceGetUUID(nvmlVgpuInstance_t vgpuInstance, char *uuid,
                                               unsigned int size)
{
    ENTER_VGPU(vgpuInstance, __func__, v);
    DONE(hc_copy(uuid, size, v->uuid));
}

HC_EXPORT nvmlReturn_t nvmlVgpuInstanceGetMdevUUID(nvmlVgpuInstance_t vgpuInstance,
                                                   char *mdevUuid, unsigned int size)
{
    ENTER_VGPU(vgpuInstance, __func__, v);
    DONE(hc_copy(mdevUuid, size, v->mdev_uuid));
}

HC_EXPORT nvmlReturn_t nvmlVgpuInstanceGetType(nvmlVgpuInstance_t vgpuInstance,
                                               nvmlVgpuTypeId_t *vgpuTypeId)
{
    ENTER_VGPU(vgpuInstance, __func__, v);
    if (!vgpuTypeId)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *vgpuTypeId = v->type_id;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlVgpuTypeGetName(nvmlVgpuTypeId_t vgpuTypeId, char *vgpuTypeName,
                                           unsigned int *size)
{
    ENTER(__func__);
    const struct hc_vgpu *found = NULL;
    for (unsigned int i = 0; i < hc_scn->vgpu_count && !found; i++)
        if (hc_scn->vgpus[i].type_id == vgpuTypeId)
            found = &hc_scn->vgpus[i];
    if (!found || !size || !vgpuTypeName)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    unsigned int need = (unsigned int)strlen(found->type_name) + 1;
    if (*size < need) {
        *size = need;
        DONE(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    memcpy(vgpuTypeName, found->type_name, need);
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlVgpuInstanceGetFbUsage(nvmlVgpuInstance_t vgpuInstance,
                                                  unsigned long long *fbUsage)
{
    ENTER_VGPU(vgpuInstance, __func__, v);
    if (!fbUsage)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *fbUsage = v->fb_usage;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlVgpuInstanceGetLicenseInfo_v2(nvmlVgpuInstance_t vgpuInstance,
                                                         nvmlVgpuLicenseInfo_t *licenseInfo)
{
    ENTER_VGPU(vgpuInstance, __func__, v);
    if (!licenseInfo)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    memset(licenseInfo, 0, sizeof(*licenseInfo));
    licenseInfo->isLicensed = (unsigned char)(v->licensed != 0);
    licenseInfo->currentState = v->license_state;
    licenseInfo->licenseExpiry.year = v->exp_year;
    licenseInfo->licenseExpiry.month = (unsigned short)v->exp_month;
    licenseInfo->licenseExpiry.day = (unsigned short)v->exp_day;
    licenseInfo->licenseExpiry.hour = (unsigned short)v->exp_hour;
    licenseInfo->licenseExpiry.min = (unsigned short)v->exp_min;
    licenseInfo->licenseExpiry.sec = (unsigned short)v->exp_sec;
    licenseInfo->licenseExpiry.status = (unsigned char)v->exp_status;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlVgpuInstanceGetEncoderStats(nvmlVgpuInstance_t vgpuInstance,
                                                       unsigned int *sessionCount,
                                                       unsigned int *averageFps,
                                                       unsigned int *averageLatency)
{
    ENTER_VGPU(vgpuInstance, __func__, v);
    if (!sessionCount || !averageFps || !averageLatency)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *sessionCount = v->encoder[0];
    *averageFps = v->encoder[1];
    *averageLatency = v->encoder[2];
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlVgpuInstanceGetFBCStats(nvmlVgpuInstance_t vgpuInstance,
                                                   nvmlFBCStats_t *fbcStats)
{
    ENTER_VGPU(vgpuInstance, __func__, v);
    if (!fbcStats)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    fbcStats->sessionsCount = v->fbc[0];
    fbcStats->averageFPS = v->fbc[1];
    fbcStats->averageLatency = v->fbc[2];
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlVgpuInstanceGetGpuInstanceId(nvmlVgpuInstance_t vgpuInstance,
                                                        unsigned int *gpuInstanceId)
{
    ENTER_VGPU(vgpuInstance, __func__, v);
    if (!gpuInstanceId)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    *gpuInstanceId = v->gpu_instance_id; /* INVALID_GPU_INSTANCE_ID unless MIG-backed */
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlVgpuInstanceGetGpuPciId(nvmlVgpuInstance_t vgpuInstance,
                                                   char *vgpuPciId, unsigned int *length)
{
    ENTER_VGPU(vgpuInstance, __func__, v);
    if (!v->has_pci_id)
        DONE(NVML_ERROR_NOT_SUPPORTED);
    if (!vgpuPciId || !length)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    unsigned int need = (unsigned int)strlen(v->pci_id) + 1;
    if (*length < need) {
        *length = need;
        DONE(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    memcpy(vgpuPciId, v->pci_id, need);
    DONE(NVML_SUCCESS);
}

/*
 * Like the driver: with no vGPU on the device, SUCCESS and a count of 0; otherwise a call whose
 * count is below the number of vGPU instances gets INSUFFICIENT_SIZE and that number. Filled:
 * per vGPU instance its most recent sample newer than lastSeenTimeStamp (instances without one
 * are left out); NOT_FOUND when no instance has one.
 */
HC_EXPORT nvmlReturn_t
nvmlDeviceGetVgpuUtilization(nvmlDevice_t device, unsigned long long lastSeenTimeStamp,
                             nvmlValueType_t *sampleValType, unsigned int *vgpuInstanceSamplesCount,
                             nvmlVgpuInstanceUtilizationSample_t *utilizationSamples)
{
    ENTER_DEVICE(device, __func__, g);
    (void)g;
    if (!sampleValType || !vgpuInstanceSamplesCount)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    if (!hc_scn->vgpu_manager)
        DONE(NVML_ERROR_NOT_SUPPORTED);
    unsigned int n = 0;
    for (unsigned int i = 0; i < hc_scn->vgpu_count; i++)
        n += hc_scn->vgpus[i].gpu == device->index;
    *sampleValType = NVML_VALUE_TYPE_UNSIGNED_INT;
    if (n == 0) {
        *vgpuInstanceSamplesCount = 0;
        DONE(NVML_SUCCESS);
    }
    if (*vgpuInstanceSamplesCount < n || !utilizationSamples) {
        if (utilizationSamples && *vgpuInstanceSamplesCount == 0)
            DONE(NVML_ERROR_INVALID_ARGUMENT);
        *vgpuInstanceSamplesCount = n;
        DONE(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    unsigned int k = 0;
    for (unsigned int i = 0; i < hc_scn->vgpu_count; i++) {
        const struct hc_vgpu *v = &hc_scn->vgpus[i];
        if (v->gpu != device->index)
            continue;
        const struct hc_vsample *best = NULL;
        for (unsigned int j = 0; j < v->nsamples; j++)
            if (v->samples[j].ts > lastSeenTimeStamp && (!best || v->samples[j].ts > best->ts))
                best = &v->samples[j];
        if (!best)
            continue;
        nvmlVgpuInstanceUtilizationSample_t *out = &utilizationSamples[k++];
        memset(out, 0, sizeof(*out));
        out->vgpuInstance = v->id;
        out->timeStamp = best->ts;
        out->smUtil.uiVal = best->sm;
        out->memUtil.uiVal = best->mem;
        out->encUtil.uiVal = best->enc;
        out->decUtil.uiVal = best->dec;
    }
    *vgpuInstanceSamplesCount = k;
    DONE(k ? NVML_SUCCESS : NVML_ERROR_NOT_FOUND);
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetVgpuSchedulerState(nvmlDevice_t device,
                                                       nvmlVgpuSchedulerGetState_t *pSchedulerState)
{
    ENTER_DEVICE(device, __func__, g);
    if (!pSchedulerState)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    if (!hc_scn->vgpu_manager)
        DONE(NVML_ERROR_NOT_SUPPORTED);
    memset(pSchedulerState, 0, sizeof(*pSchedulerState));
    pSchedulerState->schedulerPolicy = g->sched_policy;
    pSchedulerState->arrMode = g->sched_arr_mode;
    if (g->sched_arr_mode == NVML_VGPU_SCHEDULER_ARR_ENABLE) {
        pSchedulerState->schedulerParams.vgpuSchedDataWithARR.avgFactor = g->sched_avg_factor;
        pSchedulerState->schedulerParams.vgpuSchedDataWithARR.timeslice = g->sched_timeslice;
    } else {
        pSchedulerState->schedulerParams.vgpuSchedData.timeslice = g->sched_timeslice;
    }
    DONE(NVML_SUCCESS);
}

/* ------------------------------------------------------------------------------------------ */
/* Field values (nvmlDeviceGetFieldValues): many reads in one call, each with its own return     */
/* code. A field served by an older per-call function answers with that function's override   */
/* (a GPU without ECC: NOT_SUPPORTED for the ECC fields too); field_error overrides one field.  */

static nvmlReturn_t hc_field_override(const struct hc_gpu *g, unsigned int field_id,
                                      const char *sym)
{
    for (unsigned int i = 0; i < g->nfield_errors; i++)
        if (g->field_errors[i].field_id == field_id)
            return g->field_errors[i].code;
    if (sym) {
        nvmlReturn_t rc = hc_override(hc_scn->errors, hc_scn->nerrors, sym);
        return rc != NVML_SUCCESS ? rc : hc_override(g->errors, g->nerrors, sym);
    }
    return NVML_SUCCESS;
}

/* A per-link field: the link is the scopeId (nvml.h: "Link ID needs to be specified in the
 * scopeId field"); no NVLink at all is NOT_SUPPORTED, a link past the last INVALID_ARGUMENT. */
static nvmlReturn_t hc_link_of(const struct hc_gpu *g, unsigned int scope,
                               const struct hc_link **link)
{
    if (g->nvlink_count == 0)
        return NVML_ERROR_NOT_SUPPORTED;
    if (scope >= g->nvlink_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *link = &g->links[scope];
    return NVML_SUCCESS;
}

static void hc_field(const struct hc_gpu *g, nvmlFieldValue_t *f)
{
    const struct hc_link *link = NULL;
    unsigned long long ull = 0;
    unsigned int ui = 0;
    int is_uint = 0;
    nvmlReturn_t rc = NVML_SUCCESS;
    const char *sym = NULL;
    int nvlink_counter = -1;
    switch (f->fieldId) {
    case NVML_FI_DEV_ECC_SBE_VOL_TOTAL:
    case NVML_FI_DEV_ECC_DBE_VOL_TOTAL:
    case NVML_FI_DEV_ECC_SBE_AGG_TOTAL:
    case NVML_FI_DEV_ECC_DBE_AGG_TOTAL: {
        unsigned int id = f->fieldId - NVML_FI_DEV_ECC_SBE_VOL_TOTAL;
        sym = "nvmlDeviceGetTotalEccErrors";
        ull = g->ecc[id % 2 ? NVML_MEMORY_ERROR_TYPE_UNCORRECTED : NVML_MEMORY_ERROR_TYPE_CORRECTED]
                    [id / 2 ? NVML_AGGREGATE_ECC : NVML_VOLATILE_ECC];
        break;
    }
    case NVML_FI_DEV_RETIRED_SBE:
    case NVML_FI_DEV_RETIRED_DBE:
    case NVML_FI_DEV_RETIRED_PENDING:
        ull = g->retired[f->fieldId - NVML_FI_DEV_RETIRED_SBE];
        break;
    case NVML_FI_DEV_REMAPPED_COR:
    case NVML_FI_DEV_REMAPPED_UNC:
    case NVML_FI_DEV_REMAPPED_PENDING:
    case NVML_FI_DEV_REMAPPED_FAILURE:
        sym = "nvmlDeviceGetRemappedRows";
        /* As nvmlDeviceGetRemappedRows: not served while MIG is on (nvml.h). */
        if (g->mig_mode)
            rc = NVML_ERROR_NOT_SUPPORTED;
        ui = g->remapped[f->fieldId - NVML_FI_DEV_REMAPPED_COR];
        is_uint = 1;
        break;
    case NVML_FI_DEV_PCIE_REPLAY_COUNTER:
        sym = "nvmlDeviceGetPcieReplayCounter";
        ui = g->pcie_replay;
        is_uint = 1;
        break;
    case NVML_FI_DEV_PCIE_REPLAY_ROLLOVER_COUNTER:
        ui = g->pcie_replay_rollover;
        is_uint = 1;
        break;
    case NVML_FI_DEV_PCIE_L0_TO_RECOVERY_COUNTER:
        ui = g->pcie_l0_to_recovery;
        is_uint = 1;
        break;
    case NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
        sym = "nvmlDeviceGetTotalEnergyConsumption";
        ull = g->energy_mj;
        break;
    case NVML_FI_DEV_POWER_INSTANT:
        sym = "nvmlDeviceGetPowerUsage";
        ui = g->power_mw;
        is_uint = 1;
        break;
    case NVML_FI_DEV_POWER_AVERAGE:
        /* nvml.h: Ampere (except GA100) or newer. */
        if (!g->has_power_average)
            rc = NVML_ERROR_NOT_SUPPORTED;
        ui = g->power_average_mw;
        is_uint = 1;
        break;
    case NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL:
        nvlink_counter = NVML_NVLINK_ERROR_DL_REPLAY;
        break;
    case NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL:
        nvlink_counter = NVML_NVLINK_ERROR_DL_RECOVERY;
        break;
    case NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL:
        nvlink_counter = NVML_NVLINK_ERROR_DL_CRC_FLIT;
        break;
    case NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL:
        nvlink_counter = NVML_NVLINK_ERROR_DL_CRC_DATA;
        break;
    case NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX:
    case NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX:
        rc = hc_link_of(g, f->scopeId, &link);
        if (rc == NVML_SUCCESS)
            ull = f->fieldId == NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX ? link->tx_kib : link->rx_kib;
        break;
    default:
        rc = NVML_ERROR_NOT_SUPPORTED;
    }
    if (nvlink_counter >= 0) {
        sym = "nvmlDeviceGetNvLinkErrorCounter";
        rc = hc_link_of(g, f->scopeId, &link);
        if (rc == NVML_SUCCESS)
            ull = link->counter[nvlink_counter];
    }
    if (rc == NVML_SUCCESS)
        rc = hc_field_override(g, f->fieldId, sym);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    f->timestamp = (long long)now.tv_sec * 1000000 + now.tv_nsec / 1000;
    f->latencyUsec = 0;
    f->nvmlReturn = rc;
    memset(&f->value, 0, sizeof(f->value));
    if (is_uint) {
        f->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
        f->value.uiVal = ui;
    } else {
        f->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
        f->value.ullVal = ull;
    }
}

HC_EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount,
                                                nvmlFieldValue_t *values)
{
    ENTER_DEVICE(device, __func__, g);
    if (!values || valuesCount < 0)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < valuesCount; i++)
        hc_field(g, &values[i]);
    DONE(NVML_SUCCESS);
}

/* ------------------------------------------------------------------------------------------ */
/* GPM (Hopper and newer): a sample is a snapshot of the GPU's (or one GPU instance's) counters; */
/* nvmlGpmMetricsGet turns two of them into metrics over the interval between them.            */

#define HC_GPM_SAMPLE_MAGIC 0x47504d53u /* "GPMS" */

struct nvmlGpmSample_st {
    unsigned int magic;
    int filled;
    unsigned int device_index, gpu_instance_id; /* 0xFFFFFFFF: the whole GPU */
    unsigned long long taken_ns;
};

static unsigned int hc_gpm_live; /* allocated and not yet freed, for the leak tests */

static int hc_sample_ok(nvmlGpmSample_t sample)
{
    return sample && sample->magic == HC_GPM_SAMPLE_MAGIC;
}

HC_EXPORT nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t device, nvmlGpmSupport_t *gpmSupport)
{
    ENTER_DEVICE(device, __func__, g);
    if (!gpmSupport)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    if (gpmSupport->version != NVML_GPM_SUPPORT_VERSION)
        DONE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    gpmSupport->isSupportedDevice = g->gpm_supported ? 1 : 0;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *gpmSample)
{
    ENTER(__func__);
    if (!gpmSample)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    struct nvmlGpmSample_st *sample = calloc(1, sizeof(*sample));
    if (!sample)
        DONE(NVML_ERROR_MEMORY);
    sample->magic = HC_GPM_SAMPLE_MAGIC;
    hc_gpm_live++;
    *gpmSample = sample;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t gpmSample)
{
    ENTER(__func__);
    if (!hc_sample_ok(gpmSample))
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    gpmSample->magic = 0;
    free(gpmSample);
    hc_gpm_live--;
    DONE(NVML_SUCCESS);
}

static nvmlReturn_t hc_gpm_take(nvmlDevice_t device, const struct hc_gpu *g, unsigned int gi,
                                nvmlGpmSample_t sample)
{
    if (!hc_sample_ok(sample))
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!g->gpm_supported)
        return NVML_ERROR_NOT_SUPPORTED;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    sample->filled = 1;
    sample->device_index = device->index;
    sample->gpu_instance_id = gi;
    sample->taken_ns = (unsigned long long)now.tv_sec * 1000000000ULL + now.tv_nsec;
    return NVML_SUCCESS;
}

HC_EXPORT nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t device, nvmlGpmSample_t gpmSample)
{
    ENTER_DEVICE(device, __func__, g);
    DONE(hc_gpm_take(device, g, 0xFFFFFFFFu, gpmSample));
}

HC_EXPORT nvmlReturn_t nvmlGpmMigSampleGet(nvmlDevice_t device, unsigned int gpuInstanceId,
                                           nvmlGpmSample_t gpmSample)
{
    ENTER_DEVICE(device, __func__, g);
    if (!g->mig_mode)
        DONE(NVML_ERROR_NOT_SUPPORTED);
    int known = 0;
    for (unsigned int i = 0; i < g->ngpm_sets; i++)
        known |= g->gpm_sets[i].gpu_instance_id == gpuInstanceId;
    if (!known || gpuInstanceId == 0xFFFFFFFFu)
        DONE(NVML_ERROR_NOT_FOUND);
    DONE(hc_gpm_take(device, g, gpuInstanceId, gpmSample));
}

HC_EXPORT nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *metricsGet)
{
    ENTER(__func__);
    if (!metricsGet)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    if (metricsGet->version != NVML_GPM_METRICS_GET_VERSION)
        DONE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    nvmlGpmSample_t a = metricsGet->sample1, b = metricsGet->sample2;
    if (metricsGet->numMetrics > NVML_GPM_METRIC_MAX || !hc_sample_ok(a) || !hc_sample_ok(b) ||
        !a->filled || !b->filled || a->device_index != b->device_index ||
        a->gpu_instance_id != b->gpu_instance_id || b->taken_ns <= a->taken_ns ||
        a->device_index >= hc_scn->gpu_count)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    const struct hc_gpu *g = &hc_scn->gpus[a->device_index];
    if (g->lost)
        DONE(NVML_ERROR_GPU_IS_LOST);
    const struct hc_gpm_set *set = NULL;
    for (unsigned int i = 0; i < g->ngpm_sets; i++)
        if (g->gpm_sets[i].gpu_instance_id == a->gpu_instance_id)
            set = &g->gpm_sets[i];
    for (unsigned int m = 0; m < metricsGet->numMetrics; m++) {
        nvmlGpmMetric_t *metric = &metricsGet->metrics[m];
        metric->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        metric->value = 0;
        metric->metricInfo.shortName = metric->metricInfo.longName = metric->metricInfo.unit =
            NULL;
        for (unsigned int k = 0; set && k < set->count; k++)
            if (set->values[k].metric_id == metric->metricId) {
                metric->nvmlReturn = NVML_SUCCESS;
                metric->value = set->values[k].value;
            }
    }
    DONE(NVML_SUCCESS);
}

/* ------------------------------------------------------------------------------------------ */
/* NVSwitch fabric and confidential computing                                                 */

HC_EXPORT nvmlReturn_t nvmlDeviceGetGpuFabricInfoV(nvmlDevice_t device,
                                                   nvmlGpuFabricInfoV_t *gpuFabricInfo)
{
    ENTER_DEVICE(device, __func__, g);
    if (!gpuFabricInfo)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    /* v2 and v3 share their layout up to healthMask; v3 adds healthSummary. */
    if (gpuFabricInfo->version != nvmlGpuFabricInfo_v3 &&
        gpuFabricInfo->version != nvmlGpuFabricInfo_v2)
        DONE(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (!g->has_fabric)
        DONE(NVML_ERROR_NOT_SUPPORTED);
    memset(gpuFabricInfo->clusterUuid, 0, sizeof(gpuFabricInfo->clusterUuid));
    gpuFabricInfo->state = (nvmlGpuFabricState_t)g->fabric_state;
    gpuFabricInfo->status = (nvmlReturn_t)g->fabric_status;
    gpuFabricInfo->cliqueId = g->fabric_clique_id;
    gpuFabricInfo->healthMask = g->fabric_health_mask;
    if (gpuFabricInfo->version == nvmlGpuFabricInfo_v3)
        gpuFabricInfo->healthSummary = (unsigned char)g->fabric_health_summary;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlSystemGetConfComputeState(nvmlConfComputeSystemState_t *state)
{
    ENTER(__func__);
    if (!state)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    if (!hc_scn->has_cc)
        DONE(NVML_ERROR_NOT_SUPPORTED);
    state->environment = hc_scn->cc_environment;
    state->ccFeature = hc_scn->cc_feature;
    state->devToolsMode = hc_scn->cc_devtools_mode;
    DONE(NVML_SUCCESS);
}

HC_EXPORT nvmlReturn_t nvmlSystemGetConfComputeGpusReadyState(unsigned int *isAcceptingWork)
{
    ENTER(__func__);
    if (!isAcceptingWork)
        DONE(NVML_ERROR_INVALID_ARGUMENT);
    if (!hc_scn->has_cc)
        DONE(NVML_ERROR_NOT_SUPPORTED);
    *isAcceptingWork = hc_scn->cc_gpus_ready;
    DONE(NVML_SUCCESS);
}

/* ------------------------------------------------------------------------------------------ */
/* Stub-only introspection for tests (not NVML API).                                          */

HC_EXPORT unsigned int hcstub_init_refcount(void)
{
    hc_lock();
    unsigned int n = hc_refcount;
    hc_unlock();
    return n;
}

/* GPM samples allocated and not freed: a collector that leaks one per poll shows here. */
HC_EXPORT unsigned int hcstub_gpm_samples_live(void)
{
    hc_lock();
    unsigned int n = hc_gpm_live;
    hc_unlock();
    return n;
}

/* How many times a scenario was (re)parsed successfully since the library was loaded. */
HC_EXPORT unsigned int hcstub_reload_count(void)
{
    hc_lock();
    unsigned int n = hc_reloads;
    hc_unlock();
    return n;
}

/* sizeof() of the nvml.h structs this stub fills, to compare with pynvml's ctypes mirrors. */
HC_EXPORT size_t hcstub_sizeof(const char *type)
{
    static const struct {
        const char *name;
        size_t size;
    } sizes[] = {
        {"nvmlPciInfo_t", sizeof(nvmlPciInfo_t)},
        {"nvmlMemory_t", sizeof(nvmlMemory_t)},
        {"nvmlMemory_v2_t", sizeof(nvmlMemory_v2_t)},
        {"nvmlSample_t", sizeof(nvmlSample_t)},
        {"nvmlValue_t", sizeof(nvmlValue_t)},
        {"nvmlEventData_t", sizeof(nvmlEventData_t)},
        {"nvmlVgpuLicenseExpiry_t", sizeof(nvmlVgpuLicenseExpiry_t)},
        {"nvmlVgpuLicenseInfo_t", sizeof(nvmlVgpuLicenseInfo_t)},
        {"nvmlFBCStats_t", sizeof(nvmlFBCStats_t)},
        {"nvmlVgpuInstanceUtilizationSample_t", sizeof(nvmlVgpuInstanceUtilizationSample_t)},
        {"nvmlVgpuSchedulerGetState_t", sizeof(nvmlVgpuSchedulerGetState_t)},
        {"nvmlTemperature_v1_t", sizeof(nvmlTemperature_v1_t)},
        {"nvmlFieldValue_t", sizeof(nvmlFieldValue_t)},
        {"nvmlGpmSupport_t", sizeof(nvmlGpmSupport_t)},
        {"nvmlGpmMetric_t", sizeof(nvmlGpmMetric_t)},
        {"nvmlGpmMetricsGet_t", sizeof(nvmlGpmMetricsGet_t)},
        {"nvmlGpuFabricInfo_v3_t", sizeof(nvmlGpuFabricInfo_v3_t)},
        {"nvmlConfComputeSystemState_t", sizeof(nvmlConfComputeSystemState_t)},
    };
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        if (strcmp(sizes[i].name, type) == 0)
            return sizes[i].size;
    return 0;
}
