using System.Collections.Concurrent;
using System.Runtime.InteropServices;

namespace Lab.Fusefs;

/// <summary>
/// Messages the server sends the kernel unasked (FUSE_NOTIFY_INVAL_*). Queued by any thread, written by
/// one thread of their own: a write of INVAL_INODE waits for the kernel's page locks, which a request in
/// flight may hold, so a request thread must never write one itself.
/// </summary>
internal sealed unsafe class FuseNotifications : IFuseNotifier
{
    private readonly Func<Fd?> _deviceFd; // read at each write: null once the session closed the device
    private readonly ConcurrentQueue<Note> _notes = new();
    private readonly SemaphoreSlim _noteSignal = new(0);
    private Thread? _noteThread;
    private volatile bool _noteStop;
    private long _notesPending, _notesSent;
    private readonly ConcurrentDictionary<ulong, int> _inodeQueued = new(); // node -> 1 when widened
    private uint _minor;

    private readonly record struct Note(FuseNotifyCode Code, ulong Node, long Offset, long Length, byte[]? Name);

    public FuseNotifications(Func<Fd?> deviceFd) => _deviceFd = deviceFd;

    /// <summary>Starts the writer once INIT has told the protocol minor (notifications need 7.12).</summary>
    public void Start(uint minor)
    {
        _minor = minor;
        _noteThread = new Thread(NoteLoop) { IsBackground = true, Name = "fuse-notify" };
        _noteThread.Start();
    }

    public bool InvalidateInode(ulong node, long offset, long length)
    {
        // One queued note per node: a second one while the first waits widens it to the whole file.
        if (!_inodeQueued.TryAdd(node, 0))
        {
            _inodeQueued.TryUpdate(node, 1, 0);
            if (_inodeQueued.ContainsKey(node)) return true;
            _inodeQueued.TryAdd(node, 0); // it was just written: queue anew
        }
        if (Queue(new Note(FuseNotifyCode.InvalInode, node, offset, length, null))) return true;
        _inodeQueued.TryRemove(node, out _);
        return false;
    }

    public bool InvalidateEntry(ulong parent, ReadOnlySpan<byte> name)
    {
        if (name.Length == 0 || name.Length > 255 || name.IndexOfAny((byte)0, (byte)'/') >= 0) return false;
        return Queue(new Note(FuseNotifyCode.InvalEntry, parent, 0, 0, name.ToArray()));
    }

    /// <summary>Notifications written to the kernel so far (including those it answered ENOENT: not cached).</summary>
    public long Sent => Interlocked.Read(ref _notesSent);

    private bool Queue(in Note n)
    {
        if (_noteStop || _noteThread == null || _minor < 12) return false;
        Interlocked.Increment(ref _notesPending);
        _notes.Enqueue(n);
        _noteSignal.Release();
        return true;
    }

    /// <summary>Waits until every queued notification has been written; false on timeout.</summary>
    public bool Wait(int timeoutMs)
    {
        long until = Environment.TickCount64 + timeoutMs;
        while (Interlocked.Read(ref _notesPending) > 0)
        {
            if (Environment.TickCount64 > until) return false;
            Thread.Sleep(1);
        }
        return true;
    }

    private void NoteLoop()
    {
        byte* buf = stackalloc byte[FuseConst.OutHeaderSize + 24 + 256];
        while (true)
        {
            _noteSignal.Wait();
            if (_noteStop) break;
            if (!_notes.TryDequeue(out var n)) continue;
            try
            {
                int len;
                var span = new Span<byte>(buf, FuseConst.OutHeaderSize + 24 + 256);
                if (n.Code == FuseNotifyCode.InvalInode)
                {
                    bool widened = _inodeQueued.TryRemove(n.Node, out int w) && w == 1;
                    var o = widened ? new FuseNotifyInvalInodeOut { Ino = n.Node, Off = 0, Len = 0 }
                                    : new FuseNotifyInvalInodeOut { Ino = n.Node, Off = n.Offset, Len = n.Length };
                    MemoryMarshal.Write(span[FuseConst.OutHeaderSize..], in o);
                    len = FuseConst.OutHeaderSize + sizeof(FuseNotifyInvalInodeOut);
                }
                else
                {
                    var name = n.Name!;
                    var o = new FuseNotifyInvalEntryOut { Parent = n.Node, NameLen = (uint)name.Length };
                    MemoryMarshal.Write(span[FuseConst.OutHeaderSize..], in o);
                    int at = FuseConst.OutHeaderSize + sizeof(FuseNotifyInvalEntryOut);
                    name.CopyTo(span[at..]);
                    span[at + name.Length] = 0;
                    len = at + name.Length + 1;
                }
                // unique 0 and the code in the error field mark a notification.
                var h = new FuseOutHeader { Len = (uint)len, Error = (int)n.Code, Unique = 0 };
                MemoryMarshal.Write(span, in h);
                var fd = _deviceFd();
                // ENOENT: the kernel does not have that node or name cached: nothing to drop.
                if (fd != null) Native.Write(fd, buf, (nuint)len);
                Interlocked.Increment(ref _notesSent);
            }
            finally { Interlocked.Decrement(ref _notesPending); }
        }
    }

    /// <summary>Stops the writer thread and drops what is still queued.</summary>
    public void Stop()
    {
        var t = _noteThread;
        if (t == null) return;
        _noteStop = true;
        _noteSignal.Release();
        t.Join(5000);
        while (_notes.TryDequeue(out _)) Interlocked.Decrement(ref _notesPending);
    }
}
