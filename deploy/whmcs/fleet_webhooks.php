<?php
/**
 * Fulfillment fleet: signed billing webhooks from WHMCS (Standard Webhooks) to `fleet run whmcs-webhooks`.
 *
 * WHMCS has no outbound webhooks, only in-process hooks. This file registers hooks for the billing
 * changes the fleet cares about, turns each into {"event", "occurred_at", "data": {"client_id", ...}},
 * signs it (webhook-id, webhook-timestamp, webhook-signature: v1,<base64 HMAC-SHA256 of
 * "id.timestamp.body">, one signature per configured secret) and POSTs it with a short timeout.
 *
 * It never throws inside WHMCS and never blocks a page for longer than the timeout. A delivery that
 * did not get a 2xx (receiver down, Kafka down: 503, another copy in flight: 409) is written to a
 * spool directory and re-sent by the AfterCronJob hook with the same webhook-id, so the receiver
 * deduplicates it. 400 and 413 are not retried: the receiver keeps such bodies on its dead-letter topic.
 *
 * Configuration: define these constants in configuration.php (or set environment variables of the
 * same names); see deploy/whmcs/README.md.
 *   FLEET_WEBHOOK_URL         https://fleet.example/webhooks/whmcs
 *   FLEET_WEBHOOK_SECRETS     whsec_... (comma-separated during a rotation: every one signs)
 *   FLEET_WEBHOOK_TIMEOUT_MS  2000
 *   FLEET_WEBHOOK_SPOOL_DIR   <system temp dir>/fleet_webhooks_spool
 *
 * Written for PHP 7.4 to 8.3 (the versions WHMCS 8 supports).
 */

if (!defined('WHMCS')) {
    die('This file cannot be accessed directly');
}

/** Spooled deliveries older than this are dropped (logged): the receiver forgets ids after a day anyway. */
const FLEET_WEBHOOKS_SPOOL_MAX_AGE_S = 7 * 86400;
/** At most this many spooled deliveries are re-sent per cron run. */
const FLEET_WEBHOOKS_SPOOL_BATCH = 200;

// --- configuration, signing, delivery -----------------------------------------------------------

function fleet_webhooks_setting($name, $default)
{
    if (defined($name)) {
        return constant($name);
    }
    $value = getenv($name);
    return ($value === false || $value === '') ? $default : $value;
}

function fleet_webhooks_config()
{
    $secrets = fleet_webhooks_setting('FLEET_WEBHOOK_SECRETS', '');
    $secrets = is_array($secrets) ? $secrets : explode(',', (string) $secrets);
    return [
        'url' => (string) fleet_webhooks_setting('FLEET_WEBHOOK_URL', 'http://127.0.0.1:18090/webhooks/whmcs'),
        'secrets' => array_values(array_filter(array_map('trim', $secrets), 'strlen')),
        'timeout_ms' => max(100, (int) fleet_webhooks_setting('FLEET_WEBHOOK_TIMEOUT_MS', 2000)),
        'spool_dir' => (string) fleet_webhooks_setting(
            'FLEET_WEBHOOK_SPOOL_DIR',
            rtrim(sys_get_temp_dir(), DIRECTORY_SEPARATOR) . DIRECTORY_SEPARATOR . 'fleet_webhooks_spool'
        ),
    ];
}

function fleet_webhooks_log($message)
{
    if (function_exists('logActivity')) {
        logActivity('fleet_webhooks: ' . $message);
    } else {
        error_log('fleet_webhooks: ' . $message);
    }
}

/** Standard Webhooks v1: the key is the base64 text after "whsec_"; one signature per secret. */
function fleet_webhooks_sign(array $secrets, $id, $timestamp, $body)
{
    $signatures = [];
    foreach ($secrets as $secret) {
        $key = base64_decode(strpos($secret, 'whsec_') === 0 ? substr($secret, 6) : $secret);
        if ($key === false || $key === '') {
            continue;
        }
        $signatures[] = 'v1,' . base64_encode(hash_hmac('sha256', $id . '.' . $timestamp . '.' . $body, $key, true));
    }
    return implode(' ', $signatures);
}

/** A new message: its webhook-id stays the same on every retry, so the receiver can deduplicate. */
function fleet_webhooks_message($event, array $data)
{
    $payload = ['event' => $event, 'occurred_at' => gmdate('Y-m-d\TH:i:s\Z'), 'data' => $data];
    $body = json_encode($payload, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_PARTIAL_OUTPUT_ON_ERROR);
    return ['id' => 'msg_' . bin2hex(random_bytes(16)), 'event' => $event, 'body' => $body, 'first_at' => time()];
}

/** POST one message, signed now; returns the HTTP status, 0 when no answer arrived. */
function fleet_webhooks_deliver(array $config, array $message)
{
    $timestamp = time();
    $headers = [
        'Content-Type: application/json',
        'webhook-id: ' . $message['id'],
        'webhook-timestamp: ' . $timestamp,
        'webhook-signature: ' . fleet_webhooks_sign($config['secrets'], $message['id'], $timestamp, $message['body']),
    ];
    if (function_exists('curl_init')) {
        return fleet_webhooks_post_curl($config['url'], $headers, $message['body'], $config['timeout_ms']);
    }
    return fleet_webhooks_post_stream($config['url'], $headers, $message['body'], $config['timeout_ms']);
}

function fleet_webhooks_post_curl($url, array $headers, $body, $timeout_ms)
{
    $curl = curl_init($url);
    curl_setopt_array($curl, [
        CURLOPT_POST => true,
        CURLOPT_POSTFIELDS => $body,
        CURLOPT_HTTPHEADER => array_merge($headers, ['Expect:']), // no 100-continue round trip
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_TIMEOUT_MS => $timeout_ms,
        CURLOPT_CONNECTTIMEOUT_MS => min(1000, $timeout_ms),
        CURLOPT_NOSIGNAL => true, // sub-second timeouts work with the synchronous resolver too
    ]);
    $answer = curl_exec($curl);
    $status = $answer === false ? 0 : (int) curl_getinfo($curl, CURLINFO_RESPONSE_CODE);
    if ($answer === false) {
        fleet_webhooks_log('POST to ' . $url . ' failed: ' . curl_error($curl));
    }
    curl_close($curl);
    return $status;
}

/** Fallback for a PHP without the curl extension (WHMCS itself requires curl). */
function fleet_webhooks_post_stream($url, array $headers, $body, $timeout_ms)
{
    $context = stream_context_create(['http' => [
        'method' => 'POST',
        'header' => implode("\r\n", $headers),
        'content' => $body,
        'timeout' => $timeout_ms / 1000,
        'ignore_errors' => true, // read 4xx/5xx answers instead of failing
    ]]);
    $answer = @file_get_contents($url, false, $context);
    $response_headers = function_exists('http_get_last_response_headers')
        ? http_get_last_response_headers()
        : (isset($http_response_header) ? $http_response_header : null);
    if ($answer === false || empty($response_headers) || !preg_match('#^HTTP/\S+\s+(\d{3})#', $response_headers[0], $m)) {
        fleet_webhooks_log('POST to ' . $url . ' failed without an answer');
        return 0;
    }
    return (int) $m[1];
}

/** 2xx: delivered. 400/413: the receiver will never take this body (it dead-letters 400s itself). */
function fleet_webhooks_finished($status)
{
    return ($status >= 200 && $status < 300) || $status === 400 || $status === 413;
}

// --- the spool: at-least-once delivery across receiver outages ----------------------------------

function fleet_webhooks_spool(array $config, array $message, $status)
{
    $dir = $config['spool_dir'];
    if (!is_dir($dir) && !@mkdir($dir, 0700, true) && !is_dir($dir)) {
        fleet_webhooks_log('cannot create spool directory ' . $dir . '; ' . $message['event'] . ' ' . $message['id'] . ' lost');
        return;
    }
    $file = $dir . DIRECTORY_SEPARATOR . $message['id'] . '.json';
    if (@file_put_contents($file . '.tmp', json_encode($message)) === false || !@rename($file . '.tmp', $file)) {
        fleet_webhooks_log('cannot write ' . $file . '; ' . $message['event'] . ' ' . $message['id'] . ' lost');
        return;
    }
    fleet_webhooks_log('answer ' . $status . ' for ' . $message['event'] . ' ' . $message['id'] . '; spooled for the next cron run');
}

/** Re-send spooled messages, oldest first; stops at the first one that gets no answer at all. */
function fleet_webhooks_flush_spool()
{
    $config = fleet_webhooks_config();
    $files = glob($config['spool_dir'] . DIRECTORY_SEPARATOR . 'msg_*.json') ?: [];
    usort($files, function ($a, $b) {
        return filemtime($a) - filemtime($b);
    });
    foreach (array_slice($files, 0, FLEET_WEBHOOKS_SPOOL_BATCH) as $file) {
        $message = json_decode((string) @file_get_contents($file), true);
        if (!is_array($message) || !isset($message['id'], $message['body'], $message['first_at'])) {
            fleet_webhooks_log('unreadable spool file ' . $file . ' removed');
            @unlink($file);
            continue;
        }
        $status = fleet_webhooks_deliver($config, $message);
        if (fleet_webhooks_finished($status)) {
            @unlink($file);
        } elseif (time() - $message['first_at'] > FLEET_WEBHOOKS_SPOOL_MAX_AGE_S) {
            fleet_webhooks_log('giving up on ' . $message['event'] . ' ' . $message['id'] . ' after 7 days');
            @unlink($file);
        } elseif ($status === 0) {
            return; // the receiver is unreachable: the rest waits for the next cron run
        }
    }
}

// --- sending one hook ---------------------------------------------------------------------------

/** Build, send, spool on failure; anything unexpected is logged, never thrown into WHMCS. */
function fleet_webhooks_emit($event, callable $build)
{
    try {
        $config = fleet_webhooks_config();
        if (!$config['secrets']) {
            fleet_webhooks_log('FLEET_WEBHOOK_SECRETS is not set; ' . $event . ' not sent');
            return;
        }
        $data = $build();
        if (empty($data['client_id'])) {
            fleet_webhooks_log('no client id for ' . $event . ' (' . json_encode($data) . '); not sent');
            return;
        }
        $message = fleet_webhooks_message($event, $data);
        $status = fleet_webhooks_deliver($config, $message);
        if (!fleet_webhooks_finished($status)) {
            fleet_webhooks_spool($config, $message, $status);
        } elseif ($status >= 400) {
            fleet_webhooks_log('receiver refused ' . $event . ' ' . $message['id'] . ' with ' . $status);
        }
    } catch (\Throwable $e) {
        fleet_webhooks_log($event . ' not sent: ' . get_class($e) . ': ' . $e->getMessage());
    }
}

/** Client and status of an invoice: invoice hooks only pass its id. */
function fleet_webhooks_invoice($invoice_id)
{
    $invoice = localAPI('GetInvoice', ['invoiceid' => $invoice_id]);
    return [
        'client_id' => (int) (isset($invoice['userid']) ? $invoice['userid'] : 0),
        'invoice_id' => (int) $invoice_id,
        'status' => isset($invoice['status']) ? $invoice['status'] : null,
    ];
}

/** Client of an order. Order hooks run *before* the status changes, so the status is left out:
 *  the receiver infers it from the hook name (AcceptOrder → Active, CancelOrder → Cancelled, ...). */
function fleet_webhooks_order($order_id, $with_status = false)
{
    $orders = localAPI('GetOrders', ['id' => $order_id]);
    $order = isset($orders['orders']['order'][0]) ? $orders['orders']['order'][0] : [];
    $data = [
        'client_id' => (int) (isset($order['userid']) ? $order['userid'] : 0),
        'order_id' => (int) $order_id,
    ];
    if ($with_status && isset($order['status'])) {
        $data['status'] = $order['status'];
    }
    if (!empty($order['invoiceid'])) {
        $data['invoice_id'] = (int) $order['invoiceid'];
    }
    return $data;
}

/** Client and status of a service (module hooks pass the module parameters, ServiceEdit the ids). */
function fleet_webhooks_service($service_id, $client_id = 0, $with_status = true)
{
    $data = ['client_id' => (int) $client_id, 'service_id' => (int) $service_id];
    if (!$client_id || $with_status) {
        $products = localAPI('GetClientsProducts', ['serviceid' => $service_id]);
        $product = isset($products['products']['product'][0]) ? $products['products']['product'][0] : [];
        $data['client_id'] = (int) ($client_id ?: (isset($product['clientid']) ? $product['clientid'] : 0));
        if ($with_status && isset($product['status'])) {
            $data['status'] = $product['status'];
        }
    }
    return $data;
}

function fleet_webhooks_module_service(array $vars)
{
    $params = isset($vars['params']) && is_array($vars['params']) ? $vars['params'] : [];
    $client = isset($params['userid']) ? $params['userid']
        : (isset($params['clientsdetails']['userid']) ? $params['clientsdetails']['userid'] : 0);
    return fleet_webhooks_service(isset($params['serviceid']) ? $params['serviceid'] : 0, $client, false);
}

// --- the hooks (names and $vars as in https://developers.whmcs.com/hooks/hook-index/) -----------

foreach (['InvoiceCreated', 'InvoicePaid', 'InvoiceUnpaid', 'InvoiceCancelled', 'InvoiceRefunded', 'AddInvoicePayment'] as $fleet_hook) {
    add_hook($fleet_hook, 100, function ($vars) use ($fleet_hook) {
        fleet_webhooks_emit($fleet_hook, function () use ($vars) {
            return fleet_webhooks_invoice(isset($vars['invoiceid']) ? $vars['invoiceid'] : 0);
        });
    });
}

foreach (['AcceptOrder', 'PendingOrder', 'CancelOrder', 'FraudOrder'] as $fleet_hook) {
    add_hook($fleet_hook, 100, function ($vars) use ($fleet_hook) {
        fleet_webhooks_emit($fleet_hook, function () use ($vars) {
            return fleet_webhooks_order(isset($vars['orderid']) ? $vars['orderid'] : 0);
        });
    });
}

add_hook('AfterShoppingCartCheckout', 100, function ($vars) {
    fleet_webhooks_emit('AfterShoppingCartCheckout', function () use ($vars) {
        $data = fleet_webhooks_order(isset($vars['OrderID']) ? $vars['OrderID'] : 0, true);
        $data['service_ids'] = array_map('intval', isset($vars['ServiceIDs']) ? (array) $vars['ServiceIDs'] : []);
        return $data;
    });
});

add_hook('OrderPaid', 100, function ($vars) {
    fleet_webhooks_emit('OrderPaid', function () use ($vars) {
        $data = fleet_webhooks_order(isset($vars['orderId']) ? $vars['orderId'] : 0, true);
        if (!empty($vars['userId'])) {
            $data['client_id'] = (int) $vars['userId'];
        }
        if (!empty($vars['invoiceId'])) {
            $data['invoice_id'] = (int) $vars['invoiceId'];
        }
        return $data;
    });
});

add_hook('ServiceEdit', 100, function ($vars) {
    fleet_webhooks_emit('ServiceEdit', function () use ($vars) {
        return fleet_webhooks_service(
            isset($vars['serviceid']) ? $vars['serviceid'] : 0,
            isset($vars['userid']) ? $vars['userid'] : 0
        );
    });
});

foreach (['AfterModuleCreate', 'AfterModuleSuspend', 'AfterModuleUnsuspend', 'AfterModuleTerminate'] as $fleet_hook) {
    add_hook($fleet_hook, 100, function ($vars) use ($fleet_hook) {
        fleet_webhooks_emit($fleet_hook, function () use ($vars) {
            return fleet_webhooks_module_service($vars);
        });
    });
}

add_hook('ClientAdd', 100, function ($vars) {
    fleet_webhooks_emit('ClientAdd', function () use ($vars) {
        $client = isset($vars['client_id']) ? $vars['client_id'] : (isset($vars['userid']) ? $vars['userid'] : 0);
        return ['client_id' => (int) $client, 'status' => 'Active'];
    });
});

add_hook('ClientEdit', 100, function ($vars) {
    fleet_webhooks_emit('ClientEdit', function () use ($vars) {
        $data = ['client_id' => (int) (isset($vars['userid']) ? $vars['userid'] : 0)];
        if (isset($vars['status'])) {
            $data['status'] = $vars['status'];
        }
        return $data;
    });
});

add_hook('ClientClose', 100, function ($vars) {
    fleet_webhooks_emit('ClientClose', function () use ($vars) {
        return ['client_id' => (int) (isset($vars['userid']) ? $vars['userid'] : 0), 'status' => 'Closed'];
    });
});

// Card details were stored or changed. Only the client id leaves WHMCS: never card data.
add_hook('CCUpdate', 100, function ($vars) {
    fleet_webhooks_emit('CCUpdate', function () use ($vars) {
        return ['client_id' => (int) (isset($vars['userid']) ? $vars['userid'] : 0)];
    });
});

add_hook('AfterCronJob', 100, function ($vars) {
    try {
        fleet_webhooks_flush_spool();
    } catch (\Throwable $e) {
        fleet_webhooks_log('spool flush failed: ' . get_class($e) . ': ' . $e->getMessage());
    }
});

unset($fleet_hook);
