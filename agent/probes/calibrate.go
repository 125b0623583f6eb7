package probes

import (
	"encoding/binary"
	"fmt"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/nginxlayout"
	"github.com/kong-watcher/kong-watcher/bpf"
)

func (p *Probes) handle(raw []byte, r *record, req *model.Request, sink model.Sink) {
	if len(raw) >= 4 && binary.LittleEndian.Uint32(raw) == evRequest {
		// Nearly every record: no calibration buffer needed.
		if err := parseRecord(raw, r, nil); err != nil {
			p.decodeErrs.Add(1)
			return
		}
		p.deliver(&r.ev, req, sink)
		return
	}
	cb := p.calPool.Get().(*rawCalib)
	if err := parseRecord(raw, r, cb); err != nil {
		p.calPool.Put(cb)
		p.decodeErrs.Add(1)
		return
	}
	p.calibs.Add(1)
	if p.opts.onCalibration != nil {
		p.opts.onCalibration(cb)
	}
	ready, lay, sn := p.calibrate(cb)
	for _, c := range ready {
		if err := p.clk.decodeCalib(c, lay, sn, req); err != nil {
			p.decodeErrs.Add(1)
		} else if ignorable(&c.Ev, req) {
			p.ignored.Add(1)
		} else {
			p.decoded.Add(1)
			sink.Observe(req)
		}
		p.calPool.Put(c)
	}
}

// deliver decodes a fast-path event and hands it to the sink.
func (p *Probes) deliver(ev *rawEvent, req *model.Request, sink model.Sink) {
	p.clk.toRequest(ev, ev.Status, req)
	if ignorable(ev, req) {
		p.ignored.Add(1)
		return
	}
	if !plausible(ev, ev.Status, req) {
		p.decodeErrs.Add(1)
		p.verify(ev.LayoutId, false)
		return
	}
	p.verify(ev.LayoutId, true)
	p.decoded.Add(1)
	sink.Observe(req)
}

// calibrate feeds a calibration event to its binary's learner and returns the calibration
// events that can now be decoded (none while learning) with the layout (and server_name
// offset) to decode them with.
func (p *Probes) calibrate(cb *rawCalib) ([]*rawCalib, nginxlayout.Layout, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.byID[cb.Ev.LayoutId]
	if b == nil || b.failed != nil {
		p.decodeErrs.Add(1)
		p.calPool.Put(cb)
		return nil, nginxlayout.Layout{}, 0
	}
	if b.layout != nil {
		return []*rawCalib{cb}, *b.layout, b.serverName
	}
	lay, err := b.learner.Add(calibSample(cb, p.opts.Now().Unix()))
	if err != nil {
		b.failed = err
		p.lastErr = fmt.Sprintf("%s: %v", b.exe, err)
		p.log().Error(err, "cannot learn nginx request layout; detaching", "exe", b.exe)
		p.decodeErrs.Add(uint64(len(b.pending)) + 1)
		b.pending = nil
		closeLinks(&b.links)
		closeLinks(&b.luaLinks)
		return nil, nginxlayout.Layout{}, 0
	}
	if lay == nil {
		if len(b.pending) < pendingMax {
			b.pending = append(b.pending, cb)
		} else {
			p.decodeErrs.Add(1)
			p.calPool.Put(cb)
		}
		return nil, nginxlayout.Layout{}, 0
	}
	b.layout = lay
	// r->main (for the Lua probes' subrequest filter) only if every sample agrees.
	mainOK := 0
	for _, c := range append(b.pending, cb) {
		if int(c.S_off) == lay.Start {
			if !nginxlayout.MainIsR(calibSample(c, 0), *lay) {
				mainOK = -1 << 30
			}
			mainOK++
		}
	}
	b.mainOK = mainOK >= learnNeed
	b.serverName = b.learner.ServerName()
	kl := bpf.NginxReqNginxreqLayout{
		Ready:         1,
		OffStatus:     uint32(lay.Status()),
		OffServer:     uint32(lay.Server()),
		OffStart:      uint32(lay.Start),
		OffUstates:    uint32(lay.UpstreamStates),
		OffConn:       nginxlayout.ConnOffset,
		ConnSent:      nginxlayout.ConnSentOffset,
		ConnAddr:      nginxlayout.ConnAddrOffset,
		ConnListening: nginxlayout.ConnListeningOffset,
		UstateRt:      nginxlayout.UpstreamRTOffset,
	}
	if b.mainOK {
		kl.OffMain = uint32(lay.Start + nginxlayout.SToMain)
	}
	if b.serverName != 0 {
		kl.OffSrvConf = nginxlayout.SrvConfOffset
		kl.CscfName = uint32(b.serverName)
	}
	if err := p.objs.NginxreqLayouts.Put(b.id, &kl); err != nil {
		p.lastErr = err.Error()
	}
	p.log().Info("learnt nginx request layout", "exe", b.exe, "layout", lay.String(), "samples", b.learner.Seen(),
		"mainVerified", b.mainOK, "serverNameOffset", b.serverName)
	out := append(b.pending, cb)
	b.pending = nil
	return out, *lay, b.serverName
}

// verify watches the first hot-path events after a layout went live: if most are
// implausible the layout was wrong after all, and the binary goes back to calibration.
func (p *Probes) verify(id uint32, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.byID[id]
	if b == nil || b.layout == nil || b.verified >= verifyWindow {
		return
	}
	b.verified++
	if !ok {
		b.bad++
	}
	if b.bad*2 > verifyWindow || (b.verified == verifyWindow && b.bad*2 > b.verified) {
		p.log().Info("learnt layout produces implausible requests; recalibrating", "exe", b.exe, "layout", b.layout.String())
		b.layout, b.verified, b.bad = nil, 0, 0
		b.learner = nginxlayout.NewLearner(learnNeed, learnMax)
		p.objs.NginxreqLayouts.Put(b.id, &bpf.NginxReqNginxreqLayout{})
	}
}
